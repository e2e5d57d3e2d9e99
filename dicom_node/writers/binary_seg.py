"""The one path that builds a BINARY SEG: label map (or masks), source images, segments, algorithm.

:func:`build_binary_seg` builds every BINARY SEG fairnode writes: the node's SEG of a model's label map
(:func:`~dicom_node.writers.seg.build_seg`), the lesion model's SEG (:mod:`~dicom_node.writers.lesion`) and
the cohorts' ground truth (``algorithm=None``: segments known by construction, MANUAL). The caller says what
differs (segments, algorithm, UIDs, series, equipment); the object is built, made reproducible and fixed up
for images without a frame of reference here, once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_node.writers.common import (
    Equipment,
    ObjectIdentity,
    has_frame_of_reference,
    make_reproducible,
    object_identity,
    source_frames,
)


@dataclasses.dataclass(frozen=True)
class SegmentSpec:
    """One segment of a SEG: its number, what it is (SNOMED CT category and type) and how it is shown.

    Attributes
    ----------
    number
        SegmentNumber (1, 2, ...): the label value in a label map.
    label
        SegmentLabel.
    category, property_type
        SegmentedPropertyCategoryCodeSequence and SegmentedPropertyTypeCodeSequence.
    color
        display colour as RGB (0..255), written as RecommendedDisplayCIELabValue.
    tracking_uid, tracking_id
        TrackingUID and TrackingID (an SR's measurements of the segment reference them); none when ``None``.
    anatomic_regions
        AnatomicRegionSequence (e.g. the organ a lesion lies in); none when empty.
    """

    number: int
    label: str
    category: Code
    property_type: Code
    color: tuple[int, int, int]
    tracking_uid: str | None = None
    tracking_id: str | None = None
    anatomic_regions: tuple[Code, ...] = ()


@dataclasses.dataclass(frozen=True)
class SegSeries:
    """Identity of one SEG object: UIDs, series and content labels.

    ``content_label`` is a CS of at most 16 characters of ``A-Z 0-9 _``; ``content_description`` and
    ``series_description`` at most 64 characters.
    """

    series_instance_uid: str
    sop_instance_uid: str
    dimension_organization_uid: str
    series_number: int
    series_description: str
    content_label: str
    content_description: str


def segment_description(
    segment: SegmentSpec, algorithm: hd.AlgorithmIdentificationSequence | None
) -> hd.seg.SegmentDescription:
    """highdicom's SegmentDescription of ``segment``: AUTOMATIC with the ``algorithm`` that drew it, MANUAL
    (no algorithm identification) when ``algorithm`` is ``None``."""
    return hd.seg.SegmentDescription(
        segment_number=segment.number,
        segment_label=segment.label,
        segmented_property_category=segment.category,
        segmented_property_type=segment.property_type,
        algorithm_type=(
            hd.seg.SegmentAlgorithmTypeValues.MANUAL
            if algorithm is None
            else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        ),
        algorithm_identification=algorithm,
        tracking_uid=segment.tracking_uid,
        tracking_id=segment.tracking_id,
        anatomic_regions=list(segment.anatomic_regions) or None,
        display_color=hd.color.CIELabColor.from_rgb(*segment.color),
    )


class SeriesArguments(ObjectIdentity):
    content_label: str
    content_description: str


def series_arguments(series: SegSeries, created: datetime) -> SeriesArguments:
    """highdicom's keyword arguments for the identity of one SEG, its dates and times ``created``."""
    return {
        **object_identity(
            series.series_instance_uid,
            series.sop_instance_uid,
            series.series_number,
            series.series_description,
            created,
        ),
        "content_label": series.content_label,
        "content_description": series.content_description,
    }


def build_binary_seg(
    source_images: Sequence[Dataset],
    masks: np.ndarray,
    segments: Sequence[SegmentSpec],
    *,
    algorithm: hd.AlgorithmIdentificationSequence | None,
    series: SegSeries,
    equipment: Equipment,
    created: datetime,
    contributing_equipment: Sequence[hd.ContributingEquipment] = (),
    omit_empty_frames: bool = True,
) -> hd.seg.Segmentation:
    """A BINARY SEG of ``masks`` on the source images, reproducible: every stamp is ``created``.

    Parameters
    ----------
    source_images
        the images segmented, all of one series: single-frame CT/MR slices in the order of ``masks``' first
        axis, or one image (DX, or a multi-frame image with one frame per plane). Pixel data is not needed.
    masks
        either a label map, integer ``(frames, rows, columns)`` (``(rows, columns)`` for one 2D image) whose
        values are segment numbers (0 background), or one binary mask per segment, ``(frames, rows, columns,
        segments)`` in the order of ``segments`` (masks may overlap). Rows and columns as stored in the
        images, frame ``k`` on ``source_images[k]``.
    segments
        the segments declared, in segment-number order (each is declared, also one without a voxel).
    algorithm
        the algorithm that drew every segment (AUTOMATIC), or ``None`` for segments drawn by hand or known
        by construction, as a ground truth (MANUAL).
    series
        UIDs, series number and description, content label and description.
    equipment
        General Equipment of the object (:func:`~dicom_node.writers.common.equipment`).
    created
        date and time of the series, the content, the instance creation and highdicom's own contribution.
    contributing_equipment
        ContributingEquipmentSequence items beside highdicom's own (the algorithm's, IHE AI Results).
    omit_empty_frames
        leave out the frames of a segment where it has no voxel (highdicom's choice); ``False`` keeps one
        frame per segment and source frame.

    Returns
    -------
    highdicom.seg.Segmentation
        its dimension organisation UID ``series.dimension_organization_uid``; on an image without a frame of
        reference (DX), PatientOrientation copied from the source.

    Raises
    ------
    ValueError
        If ``masks`` does not match the source images (the message names both shapes) or a stack of masks
        does not have one mask per segment.
    """
    sources = list(source_images)
    if masks.ndim == 4:
        if masks.shape[-1] != len(segments):
            raise ValueError(f"masks of shape {masks.shape} must have one mask per segment, {len(segments)} segments")
        source_frames(masks[..., 0], sources, "masks")
        frames = masks
    else:
        frames = source_frames(masks, sources, "masks")
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(segment, algorithm) for segment in segments],
        **equipment,
        **series_arguments(series, created),
        omit_empty_frames=omit_empty_frames,
        contributing_equipment=list(contributing_equipment) or None,
    )
    make_reproducible(seg, created, series.dimension_organization_uid)
    if not has_frame_of_reference(sources):
        fix_projection_seg(seg, sources[0])
    return seg


def fix_projection_seg(seg: Dataset, source: Dataset) -> None:
    """Fix-ups of a SEG on an image without a frame of reference (DX).

    General Image 2C: such an image says how its rows and columns lie (PatientOrientation, copied
    from the source). And when the source has PixelSpacing, highdicom 0.28.2 writes a Pixel Measures
    item without SliceThickness (right for a projection, and dciodvfy accepts it) that its own
    ``segread`` then refuses; without a frame of reference Pixel Measures is optional, so it is left out
    (the spacing stays in the source image).
    """
    if "PatientOrientation" in source:
        seg.PatientOrientation = source.PatientOrientation
    for group in seg.get("SharedFunctionalGroupsSequence", []):
        measures = group.get("PixelMeasuresSequence")
        if measures is not None and "SliceThickness" not in measures[0]:
            del group.PixelMeasuresSequence
