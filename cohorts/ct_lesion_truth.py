"""Ground truth with liver lesions: a BINARY SEG holding the organ segments and a "liver_lesion" segment.

The organ label map keeps lesions inside the liver (clinical liver segmentations include them), so the lesion
segment overlaps the liver segment; BINARY SEG allows overlapping segments. It is written beside the study's
ground-truth ``seg.dcm`` as ``seg-lesions.dcm`` (series 902) from the lesion mask of
:func:`cohorts.ct_abdomen.generate_with_lesions`; the organ SEG itself is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, TM

from cohorts.dicom_ids import derived_uid, study_ids
from cohorts.dicom_truth_seg import _segment_description
from cohorts.dicom_writer import WrittenStudy
from cohorts.image import SyntheticImage
from cohorts.subjects import Subject

LESION_SEG_SERIES_NUMBER = 902
LESION_SEG_FILE = "seg-lesions.dcm"
#: SCT Lesion (52988006) in the Morphologically Abnormal Structure category, anatomic region liver
LESION_TYPE = codes.SCT.Lesion
LESION_CATEGORY = Code("49755003", "SCT", "Morphologically Abnormal Structure")


def lesion_truth_segmentation(
    image: SyntheticImage, lesions: np.ndarray, subject: Subject, sources: Sequence[pydicom.Dataset]
) -> hd.seg.Segmentation:
    """The organ segments of ``image`` and one "liver_lesion" segment from ``lesions`` (boolean, image shape)."""
    if lesions.shape != image.labels.shape:
        raise ValueError(f"lesion mask {lesions.shape} must have the image's shape {image.labels.shape}")
    ids = study_ids(image, subject)
    values = np.array([label.value for label in image.label_info])
    masks = np.concatenate([image.labels[..., None] == values, lesions[..., None]], axis=-1).astype(np.uint8)
    descriptions = [_segment_description(i + 1, label) for i, label in enumerate(image.label_info)]
    descriptions.append(
        hd.seg.SegmentDescription(
            segment_number=len(descriptions) + 1,
            segment_label="liver_lesion",
            segmented_property_category=LESION_CATEGORY,
            segmented_property_type=LESION_TYPE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            anatomic_regions=[codes.SCT.Liver],
            display_color=hd.color.CIELabColor.from_rgb(250, 210, 60),
        )
    )
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=derived_uid(subject, image.modality, "lesion-seg-series"),
        series_number=LESION_SEG_SERIES_NUMBER,
        sop_instance_uid=derived_uid(subject, image.modality, "lesion-seg-sop"),
        instance_number=1,
        manufacturer="fairnode cohorts",
        manufacturer_model_name=f"{subject.kind} phantom",
        software_versions="1",
        device_serial_number="1",
        content_label="GROUND_TRUTH",
        content_description="Ground truth of the synthetic phantom, with liver lesions",
        series_description="Ground truth with lesions",
        series_date=ids.study_date,
        series_time=ids.seg_time,
        content_date=ids.study_date,
        content_time=ids.seg_time,
        omit_empty_frames=True,
    )
    organisation_uid = derived_uid(subject, image.modality, "lesion-seg-dimension-organization")
    for item in [*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence]:
        item.DimensionOrganizationUID = organisation_uid
    seg.InstanceCreationDate = DA(ids.study_date)
    seg.InstanceCreationTime = TM(ids.seg_time)
    return seg


def write_lesion_truth(image: SyntheticImage, lesions: np.ndarray, subject: Subject, written: WrittenStudy) -> Path:
    """Write :func:`lesion_truth_segmentation` beside the study's ground-truth SEG; its path."""
    sources = [pydicom.dcmread(p) for p in written.image_paths]
    path = written.seg_path.parent / LESION_SEG_FILE
    lesion_truth_segmentation(image, lesions, subject, sources).save_as(path, enforce_file_format=True)
    return path
