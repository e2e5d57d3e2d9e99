"""The ground-truth DICOM-SEG of :mod:`cohorts.dicom_writer` (a BINARY Segmentation of the labels,
byte-identical when written twice), built on the node's one SEG path,
:func:`dicom_node.writers.binary_seg.build_binary_seg`, with MANUAL segments (known by construction).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from cohorts.dicom_ids import StudyIds, derived_uid
from cohorts.image import Label, SyntheticImage
from cohorts.subjects import Subject
from dicom_node.writers.binary_seg import SegmentSpec, SegSeries, build_binary_seg
from dicom_node.writers.common import Equipment, fairnode_version

#: Series number of the ground-truth SEG.
SEG_SERIES_NUMBER = 901


def label_segment(number: int, label: Label) -> SegmentSpec:
    """The ground-truth segment ``number`` of one Label (SNOMED CT codes and colour of the Label)."""
    return SegmentSpec(
        number=number,
        label=label.name,
        category=Code(label.category_code, "SCT", label.category_meaning),
        property_type=Code(label.code, "SCT", label.meaning),
        color=label.color,
    )


def phantom_equipment(subject: Subject, software_versions: str) -> Equipment:
    """General Equipment of a ground-truth SEG: the cohorts' phantom of the subject's kind."""
    return {
        "manufacturer": "fairnode cohorts",
        "manufacturer_model_name": f"{subject.kind} phantom",
        "software_versions": software_versions,
        "device_serial_number": "1",
        "institution_name": None,
    }


def seg_created(ids: StudyIds) -> datetime:
    """Date and time stamped on a study's ground-truth SEG: the study date at the SEG time."""
    return datetime.combine(ids.study_date, datetime.strptime(ids.seg_time, "%H%M%S").time())


def truth_segmentation(
    image: SyntheticImage, subject: Subject, ids: StudyIds, sources: Sequence[Dataset]
) -> hd.seg.Segmentation:
    """The BINARY SEG of the ground truth, one segment per Label, referencing ``sources``."""
    values = np.array([label.value for label in image.label_info])
    # (frames, rows, columns, segments): one binary plane per segment.
    labels = image.labels[np.newaxis] if image.modality == "DX" else image.labels
    masks = (labels[..., np.newaxis] == values).astype(np.uint8)
    series = SegSeries(
        series_instance_uid=ids.seg_series_uid,
        sop_instance_uid=ids.seg_sop_uid,
        dimension_organization_uid=derived_uid(subject, image.modality, "seg-dimension-organization"),
        series_number=SEG_SERIES_NUMBER,
        series_description="Ground truth",
        content_label="GROUND_TRUTH",
        content_description="Ground truth of the synthetic phantom",
    )
    return build_binary_seg(
        sources,
        masks,
        [label_segment(i + 1, label) for i, label in enumerate(image.label_info)],
        algorithm=None,
        series=series,
        equipment=phantom_equipment(subject, fairnode_version()),
        created=seg_created(ids),
    )
