"""The measurement groups of the TID 1500 SR: one ROI group per measured segment of the SEG.

A volume is reported in a volumetric group (TID 1411) that references its segment, the area of a 2D
image in a planar group (TID 1410) that references the segment's one frame. The quality content of a
group comes in as :class:`~dicom_node.writers.sr_quality.QualityItems`.

A volumetric group's Source Image for Segmentation items (one per source image the segment lies on, most of
the document's content items) are handed back beside the group rather than in it: highdicom deep-copies the
whole content tree and searches it for references when it builds the document, and those items made up
two thirds of that work. :func:`attach_source_images` puts them back in place once the document is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias, TypedDict

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.writers.codes import MILLILITER, coded
from dicom_node.writers.measurements import SegmentMeasurement
from dicom_node.writers.sr_quality import QualityItems

RoiGroup: TypeAlias = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
)


def roi_group(
    measurement: SegmentMeasurement,
    seg: Dataset,
    segments: dict[int, Dataset],
    sources: Sequence[Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    extra: QualityItems,
) -> tuple[RoiGroup, list[hd.sr.ContentItem]]:
    """The ROI group of one measured segment of ``seg``, with the quality content ``extra``, and the Source
    Image for Segmentation items of its Referenced Segment, left out of the group (none for a planar group or
    an empty segment): they belong right after the group's Referenced Segment item, where
    :func:`attach_source_images` puts them once the document is built."""
    number = measurement.segment_number
    if number not in segments:
        raise ValueError(
            f"measurement of {measurement.label_name!r} names segment {number}, "
            f"the SEG declares segments {sorted(segments)}"
        )
    if (measurement.volume_ml is None) == (measurement.area_mm2 is None):
        raise ValueError(
            f"measurement of segment {number} must have exactly one of volume_ml and area_mm2, got "
            f"volume_ml={measurement.volume_ml}, area_mm2={measurement.area_mm2}"
        )
    segment = segments[number]
    tracking = hd.sr.TrackingIdentifier(
        uid=segment.get("TrackingUID") or None,
        identifier=segment.get("TrackingID") or measurement.label_name,
    )
    frames = [
        i + 1
        for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence)
        if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == number
    ]
    group: RoiGroup
    detached: list[hd.sr.ContentItem] = []
    if measurement.volume_ml is not None:
        value = hd.sr.Measurement(
            name=codes.SCT.Volume, value=float(measurement.volume_ml), unit=MILLILITER, algorithm_id=algorithm
        )
        if frames:
            # highdicom's items (the source images of the segment's frames) with the segment's item built alone,
            # as from_segmentation builds it
            detached = [item for item in hd.sr.ReferencedSegment.from_segmentation(seg, number)][1:]
            referenced = hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                segment_number=number,
                source_images=[],
            )
        else:
            # An empty segment has no frame to derive source images from: reference the source series.
            referenced = hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(str(sources[0].SeriesInstanceUID)),
            )
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=referenced, **_group_content(tracking, segment, algorithm, value, extra)
        )
    else:
        if len(frames) != 1:
            raise ValueError(
                f"an area is reported on one frame, segment {number} of the SEG has {len(frames)} frames "
                "(build the SEG of a single 2D image with build_seg)"
            )
        value = hd.sr.Measurement(
            name=codes.SCT.Area,
            value=float(measurement.area_mm2 or 0.0),
            unit=codes.UCUM.SquareMillimeter,
            algorithm_id=algorithm,
        )
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=_segmentation_frame(seg, frames[0], number, sources[0]),
            **_group_content(tracking, segment, algorithm, value, extra),
        )
    group[0].ContentSequence.extend(extra.reasons)
    return group, detached


#: The concept name of the item a volumetric group references its segment by (DCM 121191).
_REFERENCED_SEGMENT = "121191"


def attach_source_images(sr: hd.sr.Comprehensive3DSR, detached: Mapping[int, Sequence[hd.sr.ContentItem]]) -> None:
    """Put the Source Image for Segmentation items that :func:`roi_group` left out back into the document ``sr``.

    ``detached`` maps ``id(group[0])`` of each group of the document to its items. They go right after the group's
    Referenced Segment item, where highdicom's :class:`~highdicom.sr.ReferencedSegment` places them: in the
    dataset that is written (whose content tree is made of the very items the document was built from) and in
    highdicom's copy of it (``sr.content``), which then holds the same item objects.

    Raises
    ------
    RuntimeError
        If a group is not found in the document's content tree by identity (a highdicom that copies the content
        it is given into the dataset: the pinned version does not).
    """
    pending = {key: items for key, items in detached.items() if items}
    view = sr.content[0].ContentSequence
    for i, container in enumerate(sr.ContentSequence):
        for j, group in enumerate(container.get("ContentSequence", [])):
            items = pending.pop(id(group), None)
            if items is None:
                continue
            position = 1 + next(
                k
                for k, item in enumerate(group.ContentSequence)
                if item.ValueType == "IMAGE" and item.ConceptNameCodeSequence[0].CodeValue == _REFERENCED_SEGMENT
            )
            for target in (group, view[i].ContentSequence[j]):
                for offset, item in enumerate(items):
                    target.ContentSequence.insert(position + offset, item)
    if pending:
        raise RuntimeError(
            f"{len(pending)} measurement group(s) not found in the SR's content tree: the source images of their "
            "segments could not be attached (highdicom is expected to keep the content items it is given)"
        )


class _GroupContent(TypedDict):
    tracking_identifier: hd.sr.TrackingIdentifier
    finding_type: hd.sr.CodedConcept
    finding_category: hd.sr.CodedConcept
    algorithm_id: hd.sr.AlgorithmIdentification
    measurements: list[hd.sr.Measurement]
    qualitative_evaluations: list[hd.sr.QualitativeEvaluation] | None


def _group_content(
    tracking: hd.sr.TrackingIdentifier,
    segment: Dataset,
    algorithm: hd.sr.AlgorithmIdentification,
    value: hd.sr.Measurement,
    extra: QualityItems,
) -> _GroupContent:
    """What a volumetric and a planar group share: the segment's tracking identifier, its property type as
    finding type and category as finding category, the algorithm, the size ``value`` and the quality items."""
    return {
        "tracking_identifier": tracking,
        "finding_type": coded(segment.SegmentedPropertyTypeCodeSequence[0]),
        "finding_category": coded(segment.SegmentedPropertyCategoryCodeSequence[0]),
        "algorithm_id": algorithm,
        "measurements": [value, *extra.measurements],
        "qualitative_evaluations": list(extra.evaluations) or None,
    }


def _segmentation_frame(
    seg: Dataset, frame_number: int, segment_number: int, source: Dataset
) -> hd.sr.ReferencedSegmentationFrame:
    """Referenced Segmentation Frame (TID 1410) of one frame of ``seg`` on the single image ``source``.

    Built directly rather than with ``ReferencedSegmentationFrame.from_segmentation``, which (highdicom
    0.28.2) copies the SEG's frame number onto the source image reference, and without the Referenced
    Segment Number that highdicom adds beside the frame number: the standard (and dciodvfy) allow only
    one of the two, and the frame already identifies its segment.
    """
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        frame_number=frame_number,
        segment_number=segment_number,
        source_image=hd.sr.SourceImageForSegmentation.from_source_image(source),
    )
    del reference[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
    return reference
