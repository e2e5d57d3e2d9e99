"""The ground-truth DICOM-SEG of :mod:`cohorts.dicom_writer` (highdicom BINARY Segmentation of the labels,
byte-identical when written twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from importlib import metadata

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, TM

from cohorts.dicom_ids import StudyIds, derived_uid
from cohorts.image import Label, SyntheticImage
from cohorts.subjects import Subject

#: Series number of the ground-truth SEG.
SEG_SERIES_NUMBER = 901


_FALLBACK_VERSION = "0.1.0"


def _fairnode_version() -> str:
    try:
        return metadata.version("fairnode")
    except metadata.PackageNotFoundError:
        return _FALLBACK_VERSION


def _segment_description(number: int, label: Label) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label.name,
        segmented_property_category=Code(label.category_code, "SCT", label.category_meaning),
        segmented_property_type=Code(label.code, "SCT", label.meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        display_color=hd.color.CIELabColor.from_rgb(*label.color),
    )


def truth_segmentation(
    image: SyntheticImage, subject: Subject, ids: StudyIds, sources: Sequence[Dataset]
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
    organisation_uid = derived_uid(subject, image.modality, "seg-dimension-organization")
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
