"""The Comprehensive 3D SR (TID 1500) of one prediction: sizes and, when given, the quality estimates."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.writers.codes import (
    DEFAULT_PROCEDURE,
    FAIRNODE_SCHEME,
    MILLILITER,
    QUALITY_ALGORITHM_NAME,
    QUALITY_CODES,
    SAMPLING_METHODS,
    coded,
    fairnode_scheme,
)
from dicom_node.writers.common import (
    OutputSettings,
    algorithm_equipment,
    check_run,
    equipment,
    make_reproducible,
    output_uid,
    series_key,
)
from dicom_node.writers.measurements import SegmentMeasurement
from inference.model_card import ModelCard
from quality.types import CaseQuality, Route, StructureQuality

logger = logging.getLogger(__name__)

#: Measurement Method of the calibrated RCA estimate (private scheme, see dicom_node/QUALITY_CODES.md).
RCA_CALIBRATED = Code("RCACAL", FAIRNODE_SCHEME, "Reverse classification accuracy, calibrated")


def build_sr(
    source_images: Sequence[Dataset],
    seg: hd.seg.Segmentation,
    measurements: Sequence[SegmentMeasurement],
    card: ModelCard,
    settings: OutputSettings,
    run: int = 1,
    *,
    created: datetime | None = None,
    quality: CaseQuality | None = None,
    probabilities: Dataset | None = None,
    uncertainty_map: Dataset | None = None,
    selection_reason: str | None = None,
    providers: Sequence[str] = (),
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 Measurement Report of one prediction: one ROI group per measured segment.

    Each group references its segment of ``seg`` (volumetric TID 1411 with a Referenced Segment for
    a volume, planar TID 1410 with a Referenced Segmentation Frame for a 2D image), carries the segment's
    tracking identifier and UID, its property type as finding type and category as finding category,
    the algorithm (TID 4019), and one Measurement: Volume in ml or Area in mm2.

    With ``quality``, each group of a structure it scores also holds (codes: :data:`QUALITY_CODES`, all
    with the Algorithm Identification ``fairnode-quality`` whose parameters name the sampling and the number
    of samples):

    - the predicted Dice (Measurement Method "Two-stage Dice predictor") with its split-conformal interval
      ``[low, high]`` as TID 310 measurement uncertainty: "+, range of upper measurement uncertainty"
      ``high - dice`` and "-, range of lower measurement uncertainty" ``dice - low``, and the interval's
      stated coverage (percent) as a further property;
    - the RCA estimate (Measurement Method "Reverse classification accuracy"): Dice with Derivation
      Maximum and Mean over the references, and the HD95 (mm) against the reference of the maximum; these
      are raw, and their Algorithm Identification's parameters say so ("RCA value: raw"). When the model
      calibrates RCA per structure, a further Dice with Measurement Method :data:`RCA_CALIBRATED` ("Reverse
      classification accuracy, calibrated") and the parameter "RCA value: calibrated" holds the raw
      maximum mapped to true Dice; it is the value the gate compared with its threshold;
    - the uncertainty scores (Measurement Method: the sampling): mean predictive entropy inside the
      structure (bits; Derivation Mean; Source of Measurement the ``uncertainty_map`` when given), mean
      mutual information (bits, Derivation Mean), mean pairwise Dice of the samples and the coefficient of
      variation of the size over the samples;
    - the qualitative evaluation "Segmentation quality" = "Acceptable" (route PASS) or "Needs review"
      (REVIEW) of that structure, decided on its own, and one TEXT "Reason for review" per reason of the
      structure.

    A value that is not finite (an HD95 with an empty mask is NaN) is left out. At document level, a
    "Qualitative Evaluations" container (TID 1500) holds the case's "Segmentation quality" and all its
    reasons (input checks included). The private scheme is declared in CodingSchemeIdentificationSequence.

    Parameters
    ----------
    source_images
        the images segmented (as given to :func:`build_seg`); evidence of the SR with ``seg``.
    seg
        the SEG built by :func:`build_seg` from these images (or one read back from its file).
    measurements
        one per segment to report, usually :func:`segment_measurements` of the same labels; a
        segment absent from the prediction is reported with volume (or area) 0.
    card, settings, run
        as for :func:`build_seg`; the SR's UIDs are derived from the same key with role ``sr``.
    created
        date and time stamped on the object; the current local time when ``None``.
    quality
        the quality estimators' result for this prediction; structures are matched to measurements by
        label value (= segment number). A measured segment without a structure gets no quality items.
    probabilities, uncertainty_map
        the PROBABILITY SEG (:func:`build_probability_seg`) and entropy map (:func:`build_uncertainty_map`)
        of the same prediction, when written: added to the evidence; the entropy measurements reference the
        map.
    selection_reason
        why the series went to this model (the selection rule, and for group-specific models the group or
        the fallback): a TEXT "Comment" at document level, "Model <name> <version> selected: <reason>".
    providers
        the inference backend the model ran on (``Segmenter.providers_in_use``): an algorithm parameter
        "inference backend: ..." of the model's Algorithm Identification in every measurement group.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        complete (CompletionFlag COMPLETE), preliminary and unverified: no person has checked it.

    Raises
    ------
    ValueError
        If ``seg`` (or ``probabilities``, ``uncertainty_map``) is not in the study of the source images, a
        measurement names a segment that ``seg`` does not declare, has neither volume nor area (or both),
        ``measurements`` is empty, ``quality`` scores a structure that is not measured (or one twice) or
        gives a predicted Dice outside its interval, or ``run`` is below 1.
    """
    sources = list(source_images)
    check_run(run)
    if not sources:
        raise ValueError("source_images is empty: an SR needs the images it reports on")
    if not measurements:
        raise ValueError("measurements is empty: a measurement report needs at least one measurement")
    study_uid = str(sources[0].StudyInstanceUID)
    derived = {"seg": seg, "probabilities": probabilities, "uncertainty_map": uncertainty_map}
    for name, item in derived.items():
        if item is not None and str(item.StudyInstanceUID) != study_uid:
            raise ValueError(f"{name} belongs to study {item.StudyInstanceUID}, the source images to study {study_uid}")
    segments: dict[int, Dataset] = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    structures = _structures_by_label(quality, measurements)
    created = created or datetime.now()
    key = series_key(sources, card, run)
    algorithm = hd.sr.AlgorithmIdentification(
        name=card.name,
        version=card.version,
        parameters=[f"inference backend: {', '.join(providers)}"[:64]] if providers else None,
    )
    groups = []
    for m in measurements:
        scored = structures.get(m.segment_number)
        extra = (
            _QualityItems.of(scored, quality, settings, uncertainty_map)
            if scored is not None and quality is not None
            else _QualityItems()
        )
        groups.append(_roi_group(m, seg, segments, sources, algorithm, extra))

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=output_uid(settings, "device", settings.manufacturer, card.name, card.version),
            name=card.name,
            manufacturer_name=settings.manufacturer,
            model_name=card.name,
            serial_number=settings.device_serial_number,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_procedure_reported(sources[0]),
        imaging_measurements=groups,
    )
    if quality is not None:
        report[0].ContentSequence.append(_case_evaluations(quality))
    if selection_reason:
        report[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.DCM.Comment,
                value=f"Model {card.name} {card.version} selected: {selection_reason}"[:1024],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    sr = hd.sr.Comprehensive3DSR(
        # sources first: highdicom copies patient/study and the acquisition equipment from evidence[0]
        evidence=[*sources, *(item for item in derived.values() if item is not None)],
        content=report[0],
        series_instance_uid=output_uid(settings, *key, "sr", "series"),
        series_number=settings.sr_series_number,
        sop_instance_uid=output_uid(settings, *key, "sr", "instance"),
        instance_number=1,
        **equipment(settings),
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=settings.sr_series_description.format(model=card.name)[:64],
        series_date=created.date(),
        series_time=created.time(),
        content_date=created.date(),
        content_time=created.time(),
        contributing_equipment=[algorithm_equipment(card, settings, created)],
    )
    make_reproducible(sr, created)
    if quality is not None:
        sr.CodingSchemeIdentificationSequence = [fairnode_scheme()]
    logger.info(
        "built SR %s (series %s, %d groups%s) referencing SEG %s",
        sr.SOPInstanceUID,
        sr.SeriesInstanceUID,
        len(groups),
        f", quality {quality.route}" if quality is not None else "",
        seg.SOPInstanceUID,
    )
    return sr


def _structures_by_label(
    quality: CaseQuality | None, measurements: Sequence[SegmentMeasurement]
) -> dict[int, StructureQuality]:
    if quality is None:
        return {}
    measured = {m.segment_number for m in measurements}
    structures: dict[int, StructureQuality] = {}
    for structure in quality.structures:
        if structure.label not in measured:
            raise ValueError(
                f"quality scores structure {structure.label} ({structure.name!r}), the measurements are of "
                f"segments {sorted(measured)}"
            )
        if structure.label in structures:
            raise ValueError(f"quality scores structure {structure.label} ({structure.name!r}) twice")
        structures[structure.label] = structure
    return structures


@dataclass(frozen=True)
class _QualityItems:
    """The quality content of one ROI group: numeric items, coded evaluations and TEXT reasons."""

    measurements: tuple[hd.sr.Measurement, ...] = ()
    evaluations: tuple[hd.sr.QualitativeEvaluation, ...] = ()
    reasons: tuple[hd.sr.TextContentItem, ...] = ()

    @classmethod
    def of(
        cls,
        structure: StructureQuality,
        case: CaseQuality,
        settings: OutputSettings,
        uncertainty_map: Dataset | None,
    ) -> _QualityItems:
        def identification(*extra: str) -> hd.sr.AlgorithmIdentification:
            return hd.sr.AlgorithmIdentification(
                name=QUALITY_ALGORITHM_NAME,
                version=settings.software_version,
                parameters=[f"sampling: {case.method.value}", f"samples: {case.samples}", *extra],
            )

        algorithm = identification()
        items: list[hd.sr.Measurement | None] = []
        if structure.prediction is not None:
            items.append(_predicted_dice(structure, algorithm))
        if structure.rca is not None:
            rca = QUALITY_CODES["rca"]
            raw = identification("RCA value: raw")
            items += [
                _measurement("dice", structure.rca.max_dice, "unit_one", rca, raw, derivation="maximum"),
                _measurement("dice", structure.rca.mean_dice, "unit_one", rca, raw, derivation="mean"),
                _measurement("hd95", structure.rca.hd95_mm, "unit_mm", rca, raw),
            ]
            if structure.rca.calibrated_dice is not None:
                calibrated = identification("RCA value: calibrated")
                items.append(
                    _measurement(
                        "dice",
                        structure.rca.calibrated_dice,
                        "unit_one",
                        RCA_CALIBRATED,
                        calibrated,
                        derivation="maximum",
                    )
                )
        sampling = QUALITY_CODES[SAMPLING_METHODS[case.method]]
        source = (
            [hd.sr.SourceImageForMeasurement.from_source_image(uncertainty_map)]
            if uncertainty_map is not None
            else None
        )
        u = structure.uncertainty
        items += [
            _measurement("entropy", u.mean_entropy, "unit_bit", sampling, algorithm, derivation="mean", images=source),
            _measurement(
                "mutual_information", u.mean_mutual_information, "unit_bit", sampling, algorithm, derivation="mean"
            ),
            _measurement("sample_agreement", u.sample_dice, "unit_one", sampling, algorithm),
            _measurement("size_cv", u.volume_cv, "unit_one", sampling, algorithm),
        ]
        verdict = "acceptable" if structure.route == Route.PASS else "needs_review"
        return cls(
            measurements=tuple(m for m in items if m is not None),
            evaluations=(hd.sr.QualitativeEvaluation(QUALITY_CODES["quality"], QUALITY_CODES[verdict]),),
            reasons=tuple(_reason(r) for r in structure.reasons),
        )


def _measurement(
    name: str,
    value: float,
    unit: str,
    method: Code,
    algorithm: hd.sr.AlgorithmIdentification,
    *,
    derivation: str | None = None,
    images: Sequence[hd.sr.SourceImageForMeasurement] | None = None,
) -> hd.sr.Measurement | None:
    """A quality measurement (``name``, ``unit``, ``derivation``: keys of QUALITY_CODES); None if not finite."""
    if not math.isfinite(value):
        logger.debug("%s is %s: left out of the SR", QUALITY_CODES[name].meaning, value)
        return None
    return hd.sr.Measurement(
        name=QUALITY_CODES[name],
        value=float(value),
        unit=QUALITY_CODES[unit],
        method=method,
        derivation=QUALITY_CODES[derivation] if derivation is not None else None,
        referenced_images=images,
        algorithm_id=algorithm,
    )


def _predicted_dice(structure: StructureQuality, algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement | None:
    """The predicted Dice with its interval as TID 310 measurement uncertainty and its coverage in percent."""
    p = structure.prediction
    if p is None or not all(math.isfinite(v) for v in (p.dice, p.low, p.high, p.coverage)):
        return None
    if not p.low - 1e-9 <= p.dice <= p.high + 1e-9:
        raise ValueError(f"predicted Dice {p.dice} of {structure.name!r} lies outside its interval [{p.low}, {p.high}]")
    if not 0 < p.coverage < 1:
        raise ValueError(f"interval coverage of {structure.name!r} must lie in (0, 1), got {p.coverage}")
    measurement = hd.sr.Measurement(
        name=QUALITY_CODES["dice"],
        value=float(p.dice),
        unit=QUALITY_CODES["unit_one"],
        method=QUALITY_CODES["dice_predictor"],
        properties=hd.sr.MeasurementProperties(
            upper_measurement_uncertainty=max(0.0, float(p.high - p.dice)),
            lower_measurement_uncertainty=max(0.0, float(p.dice - p.low)),
        ),
        algorithm_id=algorithm,
    )
    coverage = hd.sr.NumContentItem(
        name=QUALITY_CODES["interval_coverage"],
        value=round(100.0 * float(p.coverage), 6),
        unit=QUALITY_CODES["unit_percent"],
        relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
    )
    content = measurement[0].ContentSequence
    lower = QUALITY_CODES["lower_uncertainty"].value
    position = next(i for i, item in enumerate(content) if item.ConceptNameCodeSequence[0].CodeValue == lower)
    content.insert(position + 1, coverage)
    return measurement


def _reason(text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=QUALITY_CODES["reason"], value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _case_evaluations(quality: CaseQuality) -> hd.sr.ContainerContentItem:
    """TID 1500's "Qualitative Evaluations" container: the case's route and all its reasons."""
    verdict = "acceptable" if quality.route == Route.PASS else "needs_review"
    container = hd.sr.ContainerContentItem(
        name=QUALITY_CODES["qualitative_evaluations"], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.CodeContentItem(
                name=QUALITY_CODES["quality"],
                value=QUALITY_CODES[verdict],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
            *(_reason(r) for r in quality.reasons),
        ]
    )
    return container


def _procedure_reported(source: Dataset) -> hd.sr.CodedConcept | Code:
    """The study's first ProcedureCodeSequence item, else SCT 363679005 Imaging procedure."""
    items = source.get("ProcedureCodeSequence", [])
    if items and all(k in items[0] for k in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")):
        item = items[0]
        return hd.sr.CodedConcept(item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)
    return DEFAULT_PROCEDURE


def _roi_group(
    measurement: SegmentMeasurement,
    seg: Dataset,
    segments: dict[int, Dataset],
    sources: Sequence[Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    extra: _QualityItems,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
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
    finding_type = coded(segment.SegmentedPropertyTypeCodeSequence[0])
    finding_category = coded(segment.SegmentedPropertyCategoryCodeSequence[0])
    frames = [
        i + 1
        for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence)
        if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == number
    ]
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
        group: (
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
            | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        ) = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=referenced,
            finding_type=finding_type,
            finding_category=finding_category,
            algorithm_id=algorithm,
            measurements=[value, *extra.measurements],
            qualitative_evaluations=list(extra.evaluations) or None,
        )
        group[0].ContentSequence.extend(extra.reasons)
        return group
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
        tracking_identifier=tracking,
        referenced_segment=_segmentation_frame(seg, frames[0], number, sources[0]),
        finding_type=finding_type,
        finding_category=finding_category,
        algorithm_id=algorithm,
        measurements=[value, *extra.measurements],
        qualitative_evaluations=list(extra.evaluations) or None,
    )
    group[0].ContentSequence.extend(extra.reasons)
    return group


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
