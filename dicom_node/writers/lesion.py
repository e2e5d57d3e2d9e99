"""The weakly supervised liver-lesion model's outputs: a SEG with one segment "liver lesion", a TID 1500
SR with the lesion count, the volume of each lesion and of all of them, and the model's quality, and
(optional) the counterfactual image, the CT as the model would have it without lesions, as a Parametric Map in
HU that a radiologist compares with the original.

All carry the lesion model's own algorithm identification (name, version, "trained from image-level labels
only" as a parameter) and ContributingEquipmentSequence item, apart from the organ model's objects.
Series numbers 9104 (SEG), 9105 (SR) and 9106 (counterfactual).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.writers.binary_seg import SegmentSpec, SegSeries, build_binary_seg
from dicom_node.writers.codes import MILLILITER, QUALITY_CODES, fairnode_scheme
from dicom_node.writers.common import (
    OutputSettings,
    algorithm_equipment,
    algorithm_sequence,
    check_run,
    equipment,
    frame_blocks,
    make_reproducible,
    output_uid,
    run_identity,
    series_key,
    source_frames,
)
from dicom_node.writers.maps import build_parametric_map
from dicom_node.writers.sr import device_observer
from inference.weak.shipped import LesionCard, LesionResult

logger = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 9104
SR_SERIES_NUMBER = 9105
COUNTERFACTUAL_SERIES_NUMBER = 9106
#: the counterfactual's stored values are HU + this (uint16), as CT stores them with RescaleIntercept -1024
HU_OFFSET = 1024
#: its display window (HU): the liver window
LIVER_WINDOW_HU = (60.0, 400.0)
#: lesion count (DCM 121xxx has none for "number of lesions"): the private scheme
LESION_COUNT = Code("LESIONCOUNT", "99FAIRNODE", "Number of lesions")
PROBABILITY_BEFORE = Code("LESIONPBEFORE", "99FAIRNODE", "Lesion probability of the image")
PROBABILITY_AFTER = Code("LESIONPAFTER", "99FAIRNODE", "Lesion probability of the counterfactual")
MC_AGREEMENT = Code("LESIONMCAGREE", "99FAIRNODE", "Agreement of Monte Carlo lesion calls")


def _algorithm(card: LesionCard) -> hd.AlgorithmIdentificationSequence:
    return algorithm_sequence(card, {"supervision": card.supervision})


def _contributing(card: LesionCard, settings: OutputSettings, created: datetime) -> hd.ContributingEquipment:
    return algorithm_equipment(card, settings, created, detail=card.supervision)


def build_lesion_seg(
    sources: Sequence[Dataset],
    mask: np.ndarray,
    card: LesionCard,
    settings: OutputSettings,
    run: int = 1,
    *,
    created: datetime | None = None,
) -> hd.seg.Segmentation:
    """BINARY SEG of the lesion ``mask`` (boolean ``(slices, rows, cols)`` on ``sources``), one segment."""
    sources = list(sources)
    check_run(run)
    frames = source_frames(mask.astype(np.uint8), sources, "lesion mask")
    created = created or datetime.now()
    key = series_key(sources, card, run)
    segment = SegmentSpec(
        number=1,
        label=card.segment_label,
        category=Code(*card.category),
        property_type=Code(*card.code),
        color=card.color,
        tracking_uid=output_uid(settings, *key, "lesion-seg", "tracking"),
        tracking_id=card.segment_label,
        anatomic_regions=(Code(*card.anatomic_region),),
    )
    series = SegSeries(
        series_instance_uid=output_uid(settings, *key, "lesion-seg", "series"),
        sop_instance_uid=output_uid(settings, *key, "lesion-seg", "instance"),
        dimension_organization_uid=output_uid(settings, *key, "lesion-seg", "dimension-organization"),
        series_number=SEG_SERIES_NUMBER,
        series_description=f"AI liver lesions ({card.name})"[:64],
        content_label="LESION",
        content_description=f"{card.name} {card.version}"[:64],
    )
    return build_binary_seg(
        sources,
        frames,
        [segment],
        algorithm=_algorithm(card),
        series=series,
        equipment=equipment(settings),
        created=created,
        contributing_equipment=[_contributing(card, settings, created)],
        omit_empty_frames=False,
    )


def build_counterfactual_map(
    sources: Sequence[Dataset],
    image_hu: np.ndarray,
    card: LesionCard,
    settings: OutputSettings,
    run: int = 1,
    *,
    created: datetime | None = None,
) -> hd.pm.ParametricMap:
    """The counterfactual image (float ``(slices, rows, cols)`` HU on ``sources``, from
    :func:`inference.weak.shipped.counterfactual_image`) as a Parametric Map: stored ``round(HU) + 1024``
    (uint16, clipped to 0..65535, so values under -1024 HU, such as padding outside the field of view, read
    back as -1024), mapped back to HU (slope 1, intercept -1024, quantity attenuation coefficient), shown in
    the liver window."""
    sources = list(sources)
    check_run(run)
    if not np.issubdtype(image_hu.dtype, np.floating):
        raise ValueError(f"the counterfactual image must be float HU, got dtype {image_hu.dtype}")
    frames = source_frames(image_hu, sources, "counterfactual image")
    stored = np.empty(frames.shape, dtype=np.uint16)
    for block in frame_blocks(frames):  # one block of frames at a time: no whole-volume float temporaries
        values = frames[block]
        if not np.isfinite(values).all():
            raise ValueError("the counterfactual image holds NaN or infinite values")
        stored[block] = np.clip(np.rint(values) + HU_OFFSET, 0, 65535)
    created = created or datetime.now()
    key = series_key(sources, card, run)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="HU",
        lut_explanation="Counterfactual image without the lesions the model found (HU)",
        unit=codes.UCUM.HounsfieldUnit,
        value_range=(0, 65535),
        slope=1.0,
        intercept=-float(HU_OFFSET),
        quantity_definition=codes.DCM.AttenuationCoefficient,
    )
    centre, width = LIVER_WINDOW_HU
    window = hd.VOILUTTransformation(
        window_center=centre + HU_OFFSET, window_width=width, window_explanation="liver window (HU 60 / 400)"
    )
    pm = build_parametric_map(
        sources,
        stored,
        key=key,
        role="lesion-counterfactual",
        series_number=COUNTERFACTUAL_SERIES_NUMBER,
        series_description=f"AI liver counterfactual ({card.name})",
        mapping=mapping,
        window=window,
        content_label="COUNTERFACTUAL",
        content_description=f"{card.name} {card.version} image without lesions (HU)",
        contributing=_contributing(card, settings, created),
        settings=settings,
        created=created,
    )
    logger.info("built lesion counterfactual map %s (%d frames) of series %s", pm.SOPInstanceUID, len(frames), key[0])
    return pm


def _num(name: Code, value: float, unit: Code) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit)


def build_lesion_sr(
    sources: Sequence[Dataset],
    seg: hd.seg.Segmentation,
    result: LesionResult,
    card: LesionCard,
    settings: OutputSettings,
    run: int = 1,
    *,
    created: datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 report of the lesion SEG: one group (the segment) with the number of lesions, the total
    volume (ml), each lesion's volume (ml, largest first), the quality numbers and the route."""
    sources = list(sources)
    check_run(run)
    created = created or datetime.now()
    key = series_key(sources, card, run)
    algorithm = hd.sr.AlgorithmIdentification(name=card.name, version=card.version, parameters=[card.supervision[:64]])
    one = codes.UCUM.NoUnits
    measurements = [
        _num(LESION_COUNT, result.count, one),
        _num(codes.SCT.Volume, result.total_ml, MILLILITER),
        *[
            hd.sr.Measurement(
                name=codes.SCT.Volume,
                value=v,
                unit=MILLILITER,
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=output_uid(settings, *key, "lesion-sr", "lesion", str(k)), identifier=f"liver lesion {k}"
                ),
            )
            for k, v in enumerate(result.volumes_ml, start=1)
        ],
        _num(PROBABILITY_BEFORE, result.probability_before, one),
        _num(PROBABILITY_AFTER, result.probability_after, one),
        _num(MC_AGREEMENT, result.mc_agreement, one),
    ]
    verdict = QUALITY_CODES["needs_review"] if result.route == "REVIEW" else QUALITY_CODES["acceptable"]
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=1,
        source_series=hd.sr.SourceSeriesForSegmentation(str(sources[0].SeriesInstanceUID)),
    )
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=output_uid(settings, *key, "lesion-sr", "tracking"), identifier=card.segment_label
        ),
        referenced_segment=segment,
        finding_type=Code(*card.code),
        finding_category=Code(*card.category),
        finding_sites=[hd.sr.FindingSite(Code(*card.anatomic_region))],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(QUALITY_CODES["quality"], verdict)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device_observer(card, settings)),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[group],
    )
    for reason in result.reasons:
        report[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=QUALITY_CODES["reason"],
                value=reason[:1024],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg],
        content=report[0],
        **run_identity(
            settings, key, "lesion-sr", SR_SERIES_NUMBER, f"AI liver lesion measurements ({card.name})", created
        ),
        **equipment(settings),
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=[_contributing(card, settings, created)],
    )
    make_reproducible(sr, created)
    sr.CodingSchemeIdentificationSequence = [fairnode_scheme()]
    logger.info(
        "built lesion SEG %s and SR %s: %d lesion(s), %.1f ml, %s",
        seg.SOPInstanceUID,
        sr.SOPInstanceUID,
        result.count,
        result.total_ml,
        result.route,
    )
    return sr
