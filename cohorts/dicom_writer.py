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
    spacing is ImagerPixelSpacing only (no PixelSpacing, see :mod:`cohorts.dicom_images`).

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

Modules
-------
:func:`write_study` is here; the identifiers are made in :mod:`cohorts.dicom_ids`, the image datasets in
:mod:`cohorts.dicom_images` and the ground-truth SEG in :mod:`cohorts.dicom_truth_seg`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cohorts.dicom_ids import UID_ROOT, study_ids
from cohorts.dicom_images import CT_HU_MAX, CT_HU_MIN, CT_RESCALE_INTERCEPT, MAX_STORED_12BIT, SOP_CLASS, image_datasets
from cohorts.dicom_truth_seg import SEG_SERIES_NUMBER, truth_segmentation
from cohorts.image import SyntheticImage
from cohorts.subjects import Subject

__all__ = [
    "CT_HU_MAX",
    "CT_HU_MIN",
    "CT_RESCALE_INTERCEPT",
    "MAX_STORED_12BIT",
    "SEG_SERIES_NUMBER",
    "UID_ROOT",
    "WrittenStudy",
    "write_study",
]

logger = logging.getLogger(__name__)


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
    if image.modality not in SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(SOP_CLASS)}, got {image.modality!r}")
    if not image.label_info:
        raise ValueError("image.label_info is empty: a SEG needs at least one Label to declare a segment")
    if not np.all(np.isfinite(image.pixels)):
        raise ValueError("image.pixels contains NaN or infinite values; every pixel must be finite")

    ids = study_ids(image, subject)
    study_dir = out_dir / subject.patient_id
    image_dir = study_dir / "image"
    image_dir.mkdir(parents=True, exist_ok=True)

    datasets = image_datasets(image, subject, ids)
    paths: list[Path] = []
    for k, ds in enumerate(datasets):
        path = image_dir / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)

    seg = truth_segmentation(image, subject, ids, datasets)
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
