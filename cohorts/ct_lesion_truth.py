"""Ground truth with liver lesions: a BINARY SEG holding the organ segments and a "liver_lesion" segment,
built on the node's one SEG path (:func:`dicom_node.writers.binary_seg.build_binary_seg`).

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

from cohorts.dicom_ids import derived_uid, study_ids
from cohorts.dicom_truth_seg import label_segment, phantom_equipment, seg_created
from cohorts.dicom_writer import WrittenStudy
from cohorts.image import SyntheticImage
from cohorts.subjects import Subject
from dicom_node.writers.binary_seg import SegmentSpec, SegSeries, build_binary_seg

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
    segments = [label_segment(i + 1, label) for i, label in enumerate(image.label_info)]
    segments.append(
        SegmentSpec(
            number=len(segments) + 1,
            label="liver_lesion",
            category=LESION_CATEGORY,
            property_type=LESION_TYPE,
            color=(250, 210, 60),
            anatomic_regions=(codes.SCT.Liver,),
        )
    )
    series = SegSeries(
        series_instance_uid=derived_uid(subject, image.modality, "lesion-seg-series"),
        sop_instance_uid=derived_uid(subject, image.modality, "lesion-seg-sop"),
        dimension_organization_uid=derived_uid(subject, image.modality, "lesion-seg-dimension-organization"),
        series_number=LESION_SEG_SERIES_NUMBER,
        series_description="Ground truth with lesions",
        content_label="GROUND_TRUTH",
        content_description="Ground truth of the synthetic phantom, with liver lesions",
    )
    return build_binary_seg(
        sources,
        masks,
        segments,
        algorithm=None,
        series=series,
        equipment=phantom_equipment(subject, "1"),
        created=seg_created(ids),
    )


def write_lesion_truth(image: SyntheticImage, lesions: np.ndarray, subject: Subject, written: WrittenStudy) -> Path:
    """Write :func:`lesion_truth_segmentation` beside the study's ground-truth SEG; its path."""
    sources = [pydicom.dcmread(p) for p in written.image_paths]
    path = written.seg_path.parent / LESION_SEG_FILE
    lesion_truth_segmentation(image, lesions, subject, sources).save_as(path, enforce_file_format=True)
    return path
