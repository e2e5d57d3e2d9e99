"""Re-scoring measured cases with a model's current quality calibration, exactly as the node's gate would.

A measurement keeps each structure's feature row; the predictor, the RCA calibration and the gate are
applied to it here (:func:`quality.gate.estimate_reasons`, the node's own function), so that a validation
can be re-scored after a recalibration without running the model again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fairnode.calibration.measure import CaseMeasure
from quality import gate
from quality.assess import QualityModel
from quality.gate_calibration import GateRow
from quality.types import DicePrediction, StructureRca


@dataclass(frozen=True)
class Scored:
    """One structure of one case: truth, estimates and the gate's verdict under the current calibration."""

    case: str
    label: int
    name: str
    true_dice: float
    rca_raw: float | None
    rca_calibrated: float | None
    predicted: DicePrediction | None
    structure_flag: bool
    case_flag: bool
    structure_route: str
    reasons: tuple[str, ...]
    groups: dict[str, str] = field(default_factory=dict)


def plausibility(m: CaseMeasure, structure: dict[str, object]) -> list[str]:
    """A structure's plausibility reasons (older measurements: read back from the case's reasons)."""
    stored = structure.get("plausibility")
    if isinstance(stored, list):
        return [str(r) for r in stored]
    name = str(structure["name"])
    return [r for r in m.reasons if r.startswith((f"{name}: missing", f"{name}: implausible size"))]


def input_reasons(m: CaseMeasure) -> list[str]:
    return m.input_reasons or [r for r in m.reasons if r.startswith(("input:", "RCA could not"))]


def _rca(structure: dict[str, object], features: dict[str, float], qm: QualityModel) -> StructureRca | None:
    raw = features.get("rca_max_dice", math.nan)
    if raw is None or not math.isfinite(raw):
        return None
    rca = StructureRca(
        label=int(structure["label"]),  # type: ignore[call-overload]
        name=str(structure["name"]),
        max_dice=float(raw),
        mean_dice=float(features.get("rca_mean_dice", raw)),
        hd95_mm=float(features.get("rca_hd95_mm", math.nan)),
    )
    return qm.rca_calibration.calibrate(rca) if qm.rca_calibration is not None else rca


def score(
    cases: Sequence[CaseMeasure],
    qm: QualityModel,
    predictions: Mapping[tuple[str, int], DicePrediction] | None = None,
) -> list[Scored]:
    """Every structure of ``cases`` re-scored with ``qm`` (predictor, RCA calibration, gate limits);
    ``predictions`` by (case, label) replace the predictor's where given (out-of-fold predictions of
    calibration cases, see :attr:`quality.predictor.DicePredictor.out_of_fold`)."""
    out: list[Scored] = []
    given = predictions or {}
    for m in cases:
        feats = [{k: float(v) for k, v in s["features"].items()} for s in m.structures]  # type: ignore[attr-defined]
        labels = [int(s["label"]) for s in m.structures]  # type: ignore[call-overload]
        preds: list[DicePrediction | None] = (
            list(qm.predictor.predict(feats, labels)) if qm.predictor is not None else [None] * len(labels)
        )
        preds = [given.get((m.case, lab), p) for lab, p in zip(labels, preds, strict=True)]
        case_flag = bool(input_reasons(m))
        for s, f, p in zip(m.structures, feats, preds, strict=True):
            rca = _rca(s, f, qm)
            reasons = plausibility(m, s)
            if qm.limits is not None:
                reasons += gate.estimate_reasons(str(s["name"]), rca, p, qm.limits)
            else:
                reasons.append("the model has no quality calibration")
            out.append(
                Scored(
                    case=m.case,
                    label=int(s["label"]),  # type: ignore[call-overload]
                    name=str(s["name"]),
                    true_dice=float(s["true_dice"]),  # type: ignore[arg-type]
                    rca_raw=rca.max_dice if rca else None,
                    rca_calibrated=rca.calibrated_dice if rca else None,
                    predicted=p,
                    structure_flag=bool(plausibility(m, s)),
                    case_flag=case_flag,
                    structure_route="REVIEW" if reasons else "PASS",
                    reasons=tuple(reasons),
                    groups={**m.demographics, "scenario_group": m.group},
                )
            )
    return out


def gate_rows(scored: Sequence[Scored]) -> list[GateRow]:
    """The rows :func:`quality.gate_calibration.calibrate_structures` chooses thresholds on."""
    return [
        GateRow(
            case=s.case,
            name=s.name,
            true_dice=s.true_dice,
            predicted_low=s.predicted.low if s.predicted else math.nan,
            rca=(
                s.rca_calibrated if s.rca_calibrated is not None else (s.rca_raw if s.rca_raw is not None else math.nan)
            ),
            structure_flag=s.structure_flag,
            case_flag=s.case_flag,
        )
        for s in scored
    ]
