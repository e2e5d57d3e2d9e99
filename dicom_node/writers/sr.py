"""The Comprehensive 3D SR (TID 1500) of one prediction: sizes and, when given, the quality estimates.

The document is assembled here (:func:`build_sr`: observer, procedure, measurement groups, document-level
evaluations and comment, evidence, UIDs). Its parts live beside it: :mod:`~dicom_node.writers.sr_groups`
(the ROI group of each measured segment) and :mod:`~dicom_node.writers.sr_quality` (the quality content of a
group and the case's "Qualitative Evaluations"). Content about further findings (e.g. lesions) gets its own
module and joins the measurement groups where :func:`build_sr` collects them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.writers.codes import DEFAULT_PROCEDURE, fairnode_scheme
from dicom_node.writers.common import (
    Algorithm,
    OutputSettings,
    algorithm_equipment,
    check_run,
    equipment,
    make_reproducible,
    output_uid,
    run_identity,
    series_key,
)
from dicom_node.writers.measurements import SegmentMeasurement
from dicom_node.writers.sr_groups import attach_source_images, roi_group
from dicom_node.writers.sr_quality import RCA_CALIBRATED, QualityItems, case_evaluations
from inference.model_card import ModelCard
from quality.types import CaseQuality, StructureQuality

__all__ = ["RCA_CALIBRATED", "build_sr", "device_observer"]

logger = logging.getLogger(__name__)


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
    # The imaging measurement groups: one per measured segment (sr_groups.py) with its quality content
    # (sr_quality.py). Further findings of the same prediction (e.g. per-lesion groups) are built in their
    # own module and appended to ``groups`` here, after the segments' groups.
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = []
    # each group's source images, attached once the document is built (sr_groups.attach_source_images)
    detached: dict[int, list[hd.sr.ContentItem]] = {}  # by id() of the group's container item
    for m in measurements:
        scored = structures.get(m.segment_number)
        extra = (
            QualityItems.of(scored, quality, settings, uncertainty_map)
            if scored is not None and quality is not None
            else QualityItems()
        )
        group, source_images = roi_group(m, seg, segments, sources, algorithm, extra)
        groups.append(group)
        detached[id(group[0])] = source_images

    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device_observer(card, settings)),
        procedure_reported=_procedure_reported(sources[0]),
        imaging_measurements=groups,
    )
    if quality is not None:
        report[0].ContentSequence.append(case_evaluations(quality))
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
        **run_identity(
            settings,
            key,
            "sr",
            settings.sr_series_number,
            settings.sr_series_description.format(model=card.name),
            created,
        ),
        **equipment(settings),
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=[algorithm_equipment(card, settings, created)],
    )
    attach_source_images(sr, detached)
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


def device_observer(card: Algorithm, settings: OutputSettings) -> hd.sr.ObserverContext:
    """The SR's observer: the model as a device (TID 1004), its UID derived from manufacturer, name and version.

    Any SR of a model's findings names its observer with this, so that one model is one device everywhere.
    """
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=output_uid(settings, "device", settings.manufacturer, card.name, card.version),
            name=card.name,
            manufacturer_name=settings.manufacturer,
            model_name=card.name,
            serial_number=settings.device_serial_number,
        ),
    )


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


def _procedure_reported(source: Dataset) -> hd.sr.CodedConcept | Code:
    """The study's first ProcedureCodeSequence item, else SCT 363679005 Imaging procedure."""
    items = source.get("ProcedureCodeSequence", [])
    if items and all(k in items[0] for k in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")):
        item = items[0]
        return hd.sr.CodedConcept(item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)
    return DEFAULT_PROCEDURE
