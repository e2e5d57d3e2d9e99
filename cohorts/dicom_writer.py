"""Write a synthetic image and its ground truth as a DICOM study: the image series plus a DICOM-SEG.

Layout on disk, for one subject::

    <out_dir>/<patient_id>/image/0001.dcm ... NNNN.dcm   one file per slice, in slice order (DX: one file)
    <out_dir>/<patient_id>/seg.dcm                        BINARY Segmentation (highdicom) of the truth

Storage classes: ``CT`` -> CT Image Storage, ``MR`` -> MR Image Storage, ``DX`` -> Digital X-Ray Image
Storage - For Presentation. All files are Explicit VR Little Endian with a Part 10 file meta header.

Everything is deterministic: UIDs come from :func:`pydicom.uid.generate_uid` with entropy sources
``(kind, seed, index, modality, role, ...)`` under :data:`UID_ROOT`, and dates and times from the
subject (its study date and a time drawn from ``subject.rng("dicom-times/<modality>")``). Writing the
same image for the same subject twice gives byte-identical files, the SEG included: highdicom's
wall-clock stamps (InstanceCreationDate/Time, its ContributionDateTime) are set to the SEG's synthetic
content date and time, and its random DimensionOrganizationUID is replaced by a derived one.

Stored pixel values
-------------------
CT
    Hounsfield units rounded and clipped to [-1024, 3071], stored unsigned 12-bit as ``HU + 1024``
    (RescaleSlope 1, RescaleIntercept -1024, RescaleType HU).
MR
    arbitrary units clipped at 0 and scaled so that the series maximum is stored as 4095 (unsigned
    12-bit). The MR IOD has no Modality LUT, so the scale is not recorded (values stay arbitrary units).
DX
    arbitrary units mapped linearly from [min, max] of the image onto [0, 4095] (unsigned 12-bit),
    MONOCHROME2, higher = more attenuation (PixelIntensityRelationshipSign -1). No frame of reference;
    spacing is ImagerPixelSpacing only (no PixelSpacing, see :func:`_add_dx`).

Header values read from ``image.acquisition`` (all optional; defaults in brackets)
----------------------------------------------------------------------------------
all
    ``study_description`` [CT ABDOMEN / MR BRAIN / XR KNEE], ``series_description``,
    ``body_part`` [ABDOMEN / BRAIN / KNEE], ``series_number`` [2 / 3 / 1], ``protocol_name``,
    ``software_versions`` [``"<model> SW 4.2.1"``].
CT
    ``slice_thickness`` [slice spacing], ``kvp`` [120], ``tube_current`` [200 mA],
    ``exposure_time_ms`` [500], ``convolution_kernel`` [STANDARD], ``window_center`` [40],
    ``window_width`` [400], ``contrast_bolus_agent`` [none; written when not empty].
MR
    ``slice_thickness`` [slice spacing], ``scanning_sequence`` [GR\\IR], ``sequence_variant``
    [SK\\SP\\MP], ``scan_options`` [empty], ``mr_acquisition_type`` [3D], ``sequence_name`` [*tfl3d1],
    ``repetition_time`` [2300 ms], ``echo_time`` [2.98 ms], ``inversion_time`` [900 ms, written only
    when the scanning sequence contains IR], ``flip_angle`` [9 deg], ``echo_train_length`` [1],
    ``magnetic_field_strength`` [3.0 T], ``imaged_nucleus`` [1H].
DX
    ``laterality`` [R], ``view_position`` [AP], ``patient_orientation`` [L\\F for AP, R\\F for PA],
    ``kvp`` [65], ``exposure_mas`` [4], ``source_detector_distance_mm`` [1150].

Segments
--------
Segment ``i + 1`` is ``image.label_info[i]``; every Label is declared, also one absent from the image
(its segment then has no frame: highdicom omits empty frames, one frame per segment and slice that
holds it). A DX SEG has at most one frame per segment and no Pixel Measures (its source has none).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from importlib import metadata
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import DA, TM, DSfloat

from cohorts.image import Label, SyntheticImage
from cohorts.subjects import Subject

logger = logging.getLogger(__name__)

#: Root of every UID written here (pydicom's registered root; the suffix is a hash of the entropy sources).
UID_ROOT: str = PYDICOM_ROOT_UID

#: Series number of the ground-truth SEG.
SEG_SERIES_NUMBER = 901

CT_HU_MIN = -1024
CT_HU_MAX = 3071
CT_RESCALE_INTERCEPT = -1024
#: Largest stored value of the 12-bit series written here.
MAX_STORED_12BIT = 4095

_SOP_CLASS: dict[str, UID] = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
}
_STUDY_DESCRIPTION = {"CT": "CT ABDOMEN", "MR": "MR BRAIN", "DX": "XR KNEE"}
_BODY_PART = {"CT": "ABDOMEN", "MR": "BRAIN", "DX": "KNEE"}
_SERIES_NUMBER = {"CT": 2, "MR": 3, "DX": 1}
_KNEE = Code("72696002", "SCT", "Knee")
#: ViewPosition -> ViewCodeSequence item (CID 4010); other views are written without a view code.
_VIEW_CODES: dict[str, Code] = {
    "AP": codes.SCT.AnteroPosterior,
    "PA": codes.SCT.PosteroAnterior,
    "LL": codes.SCT.LeftLateral,
    "RL": codes.SCT.RightLateral,
}
_FALLBACK_VERSION = "0.1.0"


@dataclass(frozen=True)
class WrittenStudy:
    """What :func:`write_study` wrote: identifiers and paths of one study.

    Attributes
    ----------
    study_uid
        StudyInstanceUID shared by the image series and the SEG.
    series_uid
        SeriesInstanceUID of the image series.
    seg_series_uid
        SeriesInstanceUID of the SEG series.
    seg_sop_uid
        SOPInstanceUID of the SEG.
    image_paths
        the image files in slice order (``image_paths[k]`` holds slice ``k``; one path for DX).
    seg_path
        the SEG file.
    """

    study_uid: str
    series_uid: str
    seg_series_uid: str
    seg_sop_uid: str
    image_paths: tuple[Path, ...]
    seg_path: Path


@dataclass(frozen=True)
class _StudyIds:
    """Deterministic identifiers, dates and times (``HHMMSS``) of one study."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    seg_series_uid: str
    seg_sop_uid: str
    accession_number: str
    study_id: str
    study_date: date
    study_time: str
    series_time: str
    acquisition_time: str
    seg_time: str


def write_study(image: SyntheticImage, subject: Subject, out_dir: Path) -> WrittenStudy:
    """Write the image series into ``out_dir/<patient_id>/image/0001.dcm ...``, the SEG into ``.../seg.dcm``.

    Parameters
    ----------
    image
        the generated image: ``(slices, rows, columns)`` for CT/MR, ``(rows, columns)`` for DX, with its
        label map, geometry (LPS, mm) and acquisition header values.
    subject
        the synthetic patient; gives the patient, study and equipment headers and seeds the UIDs.
    out_dir
        folder under which the subject's folder (named after ``subject.patient_id``) is created.
        Existing files of the same names are overwritten.

    Returns
    -------
    WrittenStudy
        UIDs of the study, the image series and the SEG, and the paths written.

    Raises
    ------
    ValueError
        If the modality is not CT, MR or DX, the pixels are not finite, ``image.label_info`` is empty,
        or an acquisition value has the wrong type or an illegal value.
    """
    if image.modality not in _SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASS)}, got {image.modality!r}")
    if not image.label_info:
        raise ValueError("image.label_info is empty: a SEG needs at least one Label to declare a segment")
    if not np.all(np.isfinite(image.pixels)):
        raise ValueError("image.pixels contains NaN or infinite values; every pixel must be finite")

    ids = _study_ids(image, subject)
    study_dir = out_dir / subject.patient_id
    image_dir = study_dir / "image"
    image_dir.mkdir(parents=True, exist_ok=True)

    datasets = _image_datasets(image, subject, ids)
    paths: list[Path] = []
    for k, ds in enumerate(datasets):
        path = image_dir / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)

    seg = _segmentation(image, subject, ids, datasets)
    seg_path = study_dir / "seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    logger.info(
        "wrote %s study %s: image series %s (%d instances), SEG %s",
        image.modality,
        ids.study_uid,
        ids.series_uid,
        len(paths),
        ids.seg_sop_uid,
    )
    return WrittenStudy(
        study_uid=ids.study_uid,
        series_uid=ids.series_uid,
        seg_series_uid=ids.seg_series_uid,
        seg_sop_uid=ids.seg_sop_uid,
        image_paths=tuple(paths),
        seg_path=seg_path,
    )


# --- identifiers -------------------------------------------------------------------------------------


def _uid(subject: Subject, modality: str, role: str, *extra: str) -> str:
    """A UID that depends only on the subject, the modality and the role (and ``extra``)."""
    sources = [subject.kind, str(subject.seed), str(subject.index), modality, role, *extra]
    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=sources))


def _hhmmss(minutes: int, seconds: int = 0) -> str:
    return f"{minutes // 60:02d}{minutes % 60:02d}{seconds:02d}"


def _study_ids(image: SyntheticImage, subject: Subject) -> _StudyIds:
    mod = image.modality
    digest = hashlib.sha256(f"{subject.kind}/{subject.seed}/{subject.index}/{mod}".encode()).digest()
    number = int.from_bytes(digest[:8], "big")
    rng = subject.rng(f"dicom-times/{mod}")
    start = int(rng.integers(7 * 60, 17 * 60))  # minutes after midnight: 07:00 to 16:59
    second = int(rng.integers(60))
    return _StudyIds(
        study_uid=_uid(subject, mod, "study"),
        series_uid=_uid(subject, mod, "series"),
        frame_of_reference_uid=_uid(subject, mod, "frame-of-reference"),
        seg_series_uid=_uid(subject, mod, "seg-series"),
        seg_sop_uid=_uid(subject, mod, "seg-instance"),
        accession_number=f"A{number % 10**10:010d}",
        study_id=f"{(number // 10**10) % 10**6:06d}",
        study_date=subject.study_date,
        study_time=_hhmmss(start, second),
        series_time=_hhmmss(start + 2, second),
        acquisition_time=_hhmmss(start + 3, second),
        seg_time=_hhmmss(start + 45, second),
    )


# --- acquisition values ------------------------------------------------------------------------------


def _acq_float(image: SyntheticImage, key: str, default: float) -> float:
    value = image.acquisition.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"acquisition[{key!r}] must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError as exc:
        raise ValueError(f"acquisition[{key!r}] must be a number, got {value!r}") from exc


def _acq_str(image: SyntheticImage, key: str, default: str) -> str:
    value = image.acquisition.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"acquisition[{key!r}] must be a string, got {value!r}")
    return value


def _acq_strs(image: SyntheticImage, key: str, default: Sequence[str]) -> list[str]:
    """A multi-valued string: a sequence of strings or one string with backslash separators."""
    value = image.acquisition.get(key, default)
    if isinstance(value, str):
        return [v for v in value.split("\\") if v]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    raise ValueError(f"acquisition[{key!r}] must be a string or a sequence of strings, got {value!r}")


def _ds(value: float) -> DSfloat:
    """A decimal string value of at most 16 characters."""
    return DSfloat(round(float(value), 6) + 0.0, auto_format=True)


def _fairnode_version() -> str:
    try:
        return metadata.version("fairnode")
    except metadata.PackageNotFoundError:
        return _FALLBACK_VERSION


# --- pixel conversion --------------------------------------------------------------------------------


def _ct_stored(hu: np.ndarray) -> np.ndarray:
    """Hounsfield units -> unsigned 12-bit stored values (``HU - RescaleIntercept``)."""
    clipped = np.clip(np.rint(hu), CT_HU_MIN, CT_HU_MAX)
    return (clipped - CT_RESCALE_INTERCEPT).astype(np.uint16)


def _mr_stored(au: np.ndarray) -> np.ndarray:
    """Arbitrary units -> unsigned 12-bit stored values; negatives become 0, the series maximum 4095.

    MR Image Storage has no Modality LUT, so the scale is not recorded: stored values are the new a.u.
    """
    au = np.clip(au.astype(np.float64), 0.0, None)
    peak = float(au.max())
    scale = MAX_STORED_12BIT / peak if peak > 0 else 1.0
    return np.clip(np.rint(au * scale), 0, MAX_STORED_12BIT).astype(np.uint16)


def _dx_stored(au: np.ndarray) -> np.ndarray:
    """Arbitrary units -> unsigned 12-bit stored values spanning [min, max] of the image."""
    lo, hi = float(au.min()), float(au.max())
    span = hi - lo if hi > lo else 1.0
    scaled = (au.astype(np.float64) - lo) / span * MAX_STORED_12BIT
    return np.clip(np.rint(scaled), 0, MAX_STORED_12BIT).astype(np.uint16)


def _window(stored: np.ndarray) -> tuple[float, float]:
    """(WindowCenter, WindowWidth) covering the 1st to 99th percentile of stored values."""
    p1, p99 = (float(v) for v in np.percentile(stored, [1.0, 99.0]))
    return round((p1 + p99) / 2.0, 1), round(max(p99 - p1, 1.0), 1)


# --- datasets ----------------------------------------------------------------------------------------


def _common_dataset(image: SyntheticImage, subject: Subject, ids: _StudyIds) -> Dataset:
    """Patient, study, series, equipment and SOP common attributes shared by every image of the series."""
    mod = image.modality
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = _SOP_CLASS[mod]
    ds.InstanceCreationDate = ids.study_date
    ds.InstanceCreationTime = ids.acquisition_time
    ds.StudyDate = ids.study_date
    ds.SeriesDate = ids.study_date
    ds.AcquisitionDate = ids.study_date
    ds.ContentDate = ids.study_date
    ds.StudyTime = ids.study_time
    ds.SeriesTime = ids.series_time
    ds.AcquisitionTime = ids.acquisition_time
    ds.ContentTime = ids.acquisition_time
    ds.AccessionNumber = ids.accession_number
    ds.Modality = mod
    ds.Manufacturer = subject.manufacturer
    ds.InstitutionName = subject.institution
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = _acq_str(image, "study_description", _STUDY_DESCRIPTION[mod])
    ds.SeriesDescription = _acq_str(image, "series_description", _default_series_description(image))
    ds.ManufacturerModelName = subject.model_name
    # Patient
    ds.PatientName = subject.patient_name
    ds.PatientID = subject.patient_id
    ds.PatientBirthDate = subject.birth_date
    ds.PatientSex = subject.sex
    ds.EthnicGroup = subject.ethnic_group
    ds.PatientAge = f"{subject.age_years:03d}Y"
    ds.PatientSize = _ds(subject.height_m)
    ds.PatientWeight = _ds(subject.weight_kg)
    # Series, equipment
    ds.BodyPartExamined = _acq_str(image, "body_part", _BODY_PART[mod])
    if "protocol_name" in image.acquisition:
        ds.ProtocolName = _acq_str(image, "protocol_name", "")
    ds.DeviceSerialNumber = _device_serial_number(subject)
    ds.SoftwareVersions = _acq_str(image, "software_versions", f"{subject.model_name} SW 4.2.1")
    ds.StudyInstanceUID = ids.study_uid
    ds.SeriesInstanceUID = ids.series_uid
    ds.StudyID = ids.study_id
    ds.SeriesNumber = int(_acq_float(image, "series_number", _SERIES_NUMBER[mod]))
    ds.AcquisitionNumber = 1
    # Image pixel (the pixel data itself is set per instance)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return ds


def _default_series_description(image: SyntheticImage) -> str:
    if image.modality == "CT":
        return f"Abdomen {_slice_thickness(image):.1f} mm"
    if image.modality == "MR":
        return "T1 3D"
    return f"Knee {_acq_str(image, 'view_position', 'AP')}"


def _device_serial_number(subject: Subject) -> str:
    """A scanner serial number: the same for every subject scanned on the same model at the same site."""
    digest = hashlib.sha256(f"{subject.institution}/{subject.manufacturer}/{subject.model_name}".encode())
    return f"{int(digest.hexdigest()[:8], 16) % 10**6:06d}"


def _slice_thickness(image: SyntheticImage) -> float:
    return _acq_float(image, "slice_thickness", float(image.spacing[0]))


def _image_datasets(image: SyntheticImage, subject: Subject, ids: _StudyIds) -> list[Dataset]:
    """One dataset per slice (one for DX), with pixel data, in slice order."""
    common = _common_dataset(image, subject, ids)
    if image.modality == "DX":
        _add_dx(common, image)
        stored = _dx_stored(image.pixels)
        center, width = _window(stored)
        common.WindowCenter = _ds(center)
        common.WindowWidth = _ds(width)
        return [_finish(common, stored, _uid(subject, "DX", "instance", "0"), 1)]

    if image.modality == "CT":
        _add_ct(common, image)
        stored = _ct_stored(image.pixels)
    else:
        stored = _mr_stored(image.pixels)
        _add_mr(common, image)
        center, width = _window(stored)
        common.WindowCenter = _ds(center)
        common.WindowWidth = _ds(width)
    _add_frame_of_reference(common, image, ids)

    origin = np.asarray(image.origin, dtype=np.float64)
    step = float(image.spacing[0]) * np.asarray(image.slice_direction, dtype=np.float64)
    row_cosines = np.asarray(image.orientation[:3], dtype=np.float64)
    col_cosines = np.asarray(image.orientation[3:], dtype=np.float64)
    normal = np.cross(row_cosines, col_cosines)
    datasets = []
    for k in range(stored.shape[0]):
        position = origin + k * step
        ds = copy.deepcopy(common)
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(position @ normal))
        datasets.append(_finish(ds, stored[k], _uid(subject, image.modality, "instance", str(k)), k + 1))
    return datasets


def _finish(ds: Dataset, stored: np.ndarray, sop_uid: str, instance_number: int) -> Dataset:
    """Add identity, pixel data and the file meta header to one instance."""
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = instance_number
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _add_frame_of_reference(ds: Dataset, image: SyntheticImage, ids: _StudyIds) -> None:
    """Frame of reference and image plane attributes shared by all slices of a volume."""
    ds.FrameOfReferenceUID = ids.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [_ds(v) for v in image.orientation]
    ds.PixelSpacing = [_ds(image.spacing[1]), _ds(image.spacing[2])]
    ds.SliceThickness = _ds(_slice_thickness(image))


def _add_ct(ds: Dataset, image: SyntheticImage) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = _ds(_acq_float(image, "kvp", 120.0))
    ds.DataCollectionDiameter = _ds(500.0)
    ds.ReconstructionDiameter = _ds(float(image.spacing[2]) * image.pixels.shape[2])
    ds.GantryDetectorTilt = _ds(0.0)
    ds.RotationDirection = "CW"
    ds.ExposureTime = int(_acq_float(image, "exposure_time_ms", 500.0))
    ds.XRayTubeCurrent = int(_acq_float(image, "tube_current", 200.0))
    ds.Exposure = round(ds.ExposureTime * ds.XRayTubeCurrent / 1000)
    ds.ConvolutionKernel = _acq_str(image, "convolution_kernel", "STANDARD")
    agent = _acq_str(image, "contrast_bolus_agent", "")
    if agent:
        ds.ContrastBolusAgent = agent
        ds.ContrastBolusRoute = "IV"
    ds.RescaleIntercept = _ds(CT_RESCALE_INTERCEPT)
    ds.RescaleSlope = _ds(1.0)
    ds.RescaleType = "HU"
    ds.WindowCenter = _ds(_acq_float(image, "window_center", 40.0))
    ds.WindowWidth = _ds(_acq_float(image, "window_width", 400.0))


def _add_mr(ds: Dataset, image: SyntheticImage) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    scanning = _acq_strs(image, "scanning_sequence", ("GR", "IR"))
    ds.ScanningSequence = scanning
    ds.SequenceVariant = _acq_strs(image, "sequence_variant", ("SK", "SP", "MP"))
    ds.ScanOptions = _acq_strs(image, "scan_options", ())
    ds.MRAcquisitionType = _acq_str(image, "mr_acquisition_type", "3D")
    ds.SequenceName = _acq_str(image, "sequence_name", "*tfl3d1")
    ds.RepetitionTime = _ds(_acq_float(image, "repetition_time", 2300.0))
    ds.EchoTime = _ds(_acq_float(image, "echo_time", 2.98))
    if "IR" in scanning:
        ds.InversionTime = _ds(_acq_float(image, "inversion_time", 900.0))
    ds.NumberOfAverages = _ds(1.0)
    field_strength = _acq_float(image, "magnetic_field_strength", 3.0)
    ds.ImagingFrequency = _ds(42.577478 * field_strength)
    ds.ImagedNucleus = _acq_str(image, "imaged_nucleus", "1H")
    ds.EchoNumbers = 1
    ds.MagneticFieldStrength = _ds(field_strength)
    ds.SpacingBetweenSlices = _ds(float(image.spacing[0]))
    ds.EchoTrainLength = int(_acq_float(image, "echo_train_length", 1))
    ds.PixelBandwidth = _ds(240.0)
    ds.FlipAngle = _ds(_acq_float(image, "flip_angle", 9.0))


def _add_dx(ds: Dataset, image: SyntheticImage) -> None:
    laterality = _acq_str(image, "laterality", "R")
    if laterality not in ("L", "R"):
        raise ValueError(f"acquisition['laterality'] must be 'L' or 'R' for a knee, got {laterality!r}")
    view = _acq_str(image, "view_position", "AP")
    default_orientation = ("R", "F") if view == "PA" else ("L", "F")
    orientation = _acq_strs(image, "patient_orientation", default_orientation)
    if len(orientation) != 2:
        raise ValueError(f"acquisition['patient_orientation'] must have 2 values, got {orientation!r}")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.PatientOrientation = orientation
    ds.AnatomicRegionSequence = [_code_item(_KNEE)]
    if view in _VIEW_CODES:
        view_item = _code_item(_VIEW_CODES[view])
        view_item.ViewModifierCodeSequence = []
        ds.ViewCodeSequence = [view_item]
    ds.PositionerType = "COLUMN"
    ds.AcquisitionContextSequence = []
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1
    ds.RescaleIntercept = _ds(0.0)
    ds.RescaleSlope = _ds(1.0)
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.KVP = _ds(_acq_float(image, "kvp", 65.0))
    ds.Exposure = int(_acq_float(image, "exposure_mas", 4.0))
    ds.DistanceSourceToDetector = _ds(_acq_float(image, "source_detector_distance_mm", 1150.0))
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    # Detector plane spacing only: PixelSpacing (calibrated to the patient) is left out, as the standard
    # allows for an uncalibrated image. With it, highdicom 0.28 writes a SEG Pixel Measures item without
    # SliceThickness (correct without a frame of reference) that its own segread then refuses.
    ds.ImagerPixelSpacing = [_ds(image.spacing[0]), _ds(image.spacing[1])]


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


# --- segmentation ------------------------------------------------------------------------------------


def _segment_description(number: int, label: Label) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label.name,
        segmented_property_category=Code(label.category_code, "SCT", label.category_meaning),
        segmented_property_type=Code(label.code, "SCT", label.meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        display_color=hd.color.CIELabColor.from_rgb(*label.color),
    )


def _segmentation(
    image: SyntheticImage, subject: Subject, ids: _StudyIds, sources: Sequence[Dataset]
) -> hd.seg.Segmentation:
    """The BINARY SEG of the ground truth, one segment per Label, referencing ``sources``."""
    values = np.array([label.value for label in image.label_info])
    # (frames, rows, columns, segments): one binary plane per segment.
    labels = image.labels[np.newaxis] if image.modality == "DX" else image.labels
    masks = (labels[..., np.newaxis] == values).astype(np.uint8)
    descriptions = [_segment_description(i + 1, label) for i, label in enumerate(image.label_info)]
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=ids.seg_series_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=ids.seg_sop_uid,
        instance_number=1,
        manufacturer="fairnode cohorts",
        manufacturer_model_name=f"{subject.kind} phantom",
        software_versions=_fairnode_version(),
        device_serial_number="1",
        content_label="GROUND_TRUTH",
        content_description="Ground truth of the synthetic phantom",
        series_description="Ground truth",
        series_date=ids.study_date,
        series_time=ids.seg_time,
        content_date=ids.study_date,
        content_time=ids.seg_time,
        omit_empty_frames=True,
    )
    # highdicom stamps the wall clock and a random dimension organisation UID; replace both so that
    # the file is reproducible.
    organisation_uid = _uid(subject, image.modality, "seg-dimension-organization")
    for item in [*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence]:
        item.DimensionOrganizationUID = organisation_uid
    seg.InstanceCreationDate = DA(ids.study_date)
    seg.InstanceCreationTime = TM(ids.seg_time)
    seg_datetime = datetime.combine(ids.study_date, datetime.strptime(ids.seg_time, "%H%M%S").time())
    if "PatientOrientation" in sources[0] and "FrameOfReferenceUID" not in seg:
        # General Image 2C: a SEG without a frame of reference (DX) must say how its rows/columns lie.
        seg.PatientOrientation = sources[0].PatientOrientation
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item and item.Manufacturer == "Highdicom open-source contributors":
            item.ContributionDateTime = seg_datetime.strftime("%Y%m%d%H%M%S")
    return seg
