"""The measurement groups of the TID 1500 SR: one ROI group per measured segment of the SEG.

A volume is reported in a volumetric group (TID 1411) that references its segment, the area of a 2D
image in a planar group (TID 1410) that references the segment's one frame. The quality content of a
group comes in as :class:`~dicom_node.writers.sr_quality.QualityItems`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.writers.codes import MILLILITER, coded
from dicom_node.writers.measurements import SegmentMeasurement
from dicom_node.writers.sr_quality import QualityItems


def roi_group(
    measurement: SegmentMeasurement,
    seg: Dataset,
    segments: dict[int, Dataset],
    sources: Sequence[Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    extra: QualityItems,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The ROI group of one measured segment of ``seg``, with the quality content ``extra``."""
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
    group: (
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    )
    if measurement.volume_ml is not None:
        value = hd.sr.Measurement(
            name=codes.SCT.Volume, value=float(measurement.volume_ml), unit=MILLILITER, algorithm_id=algorithm
        )
        if frames:
            referenced = hd.sr.ReferencedSegment.from_segmentation(seg, number)
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
    return group


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
