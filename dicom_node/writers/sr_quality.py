"""The quality content of the TID 1500 SR: per-structure estimates, evaluations, reasons and the case's verdict.

:class:`QualityItems` holds what one ROI group of :func:`dicom_node.writers.sr.build_sr` carries for a scored
structure; :func:`case_evaluations` is the document-level "Qualitative Evaluations" container. Codes:
:data:`~dicom_node.writers.codes.QUALITY_CODES` (documented in ``dicom_node/QUALITY_CODES.md``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_node.writers.codes import (
    FAIRNODE_SCHEME,
    QUALITY_ALGORITHM_NAME,
    QUALITY_CODES,
    SAMPLING_METHODS,
)
from dicom_node.writers.common import OutputSettings
from quality.types import CaseQuality, Route, StructureQuality

logger = logging.getLogger(__name__)

#: Measurement Method of the calibrated RCA estimate (private scheme, see dicom_node/QUALITY_CODES.md).
RCA_CALIBRATED = Code("RCACAL", FAIRNODE_SCHEME, "Reverse classification accuracy, calibrated")


@dataclass(frozen=True)
class QualityItems:
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
    ) -> QualityItems:
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


def case_evaluations(quality: CaseQuality) -> hd.sr.ContainerContentItem:
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
