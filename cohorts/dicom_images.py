"""The image datasets of :mod:`cohorts.dicom_writer`: stored pixel values, patient/study/series/equipment
attributes and the CT, MR and DX specifics (one dataset per slice; one for DX).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
)
from pydicom.valuerep import DSfloat

from cohorts.dicom_ids import StudyIds, derived_uid
from cohorts.image import SyntheticImage
from cohorts.subjects import Subject

CT_HU_MIN = -1024


CT_HU_MAX = 3071


CT_RESCALE_INTERCEPT = -1024


#: Largest stored value of the 12-bit series written here.
MAX_STORED_12BIT = 4095


SOP_CLASS: dict[str, UID] = {
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


def _common_dataset(image: SyntheticImage, subject: Subject, ids: StudyIds) -> Dataset:
    """Patient, study, series, equipment and SOP common attributes shared by every image of the series."""
    mod = image.modality
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SOP_CLASS[mod]
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


def image_datasets(image: SyntheticImage, subject: Subject, ids: StudyIds) -> list[Dataset]:
    """One dataset per slice (one for DX), with pixel data, in slice order."""
    common = _common_dataset(image, subject, ids)
    if image.modality == "DX":
        _add_dx(common, image)
        stored = _dx_stored(image.pixels)
        center, width = _window(stored)
        common.WindowCenter = _ds(center)
        common.WindowWidth = _ds(width)
        return [_finish(common, stored, derived_uid(subject, "DX", "instance", "0"), 1)]

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
        datasets.append(_finish(ds, stored[k], derived_uid(subject, image.modality, "instance", str(k)), k + 1))
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


def _add_frame_of_reference(ds: Dataset, image: SyntheticImage, ids: StudyIds) -> None:
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
    ds.AnatomicRegionSequence = [code_item(_KNEE)]
    if view in _VIEW_CODES:
        view_item = code_item(_VIEW_CODES[view])
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


def code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item
