"""The routing gate: PASS or REVIEW, with the reasons a radiologist reads.

A case goes to REVIEW when any of these holds, each giving a reason with the measured value and the limit:

- the input is outside what the model card expects (modality, pixel spacing, intensity statistics);
- a structure is missing or its volume is implausible against the references' range;
- a structure's predicted Dice lower bound (split-conformal) is under its ``predicted_low_min``;
- a structure's RCA estimate (calibrated when the model has an RCA calibration) is under its ``rca_min``.

Each structure is routed on its own (PASS or REVIEW with its reasons); the case is REVIEW when any structure
is, or when the input is outside what the model expects. Thresholds are per structure where the calibration
found enough failures of that structure (:mod:`quality.gate_calibration`), otherwise the two pooled ones;
``GateLimits.shift`` moves them all to keep within a review budget. :func:`calibrate` picks the two pooled
thresholds on a calibration cohort: among all pairs that send to review the cases holding at least
``target_catch`` of the structures whose true Dice is under ``failure_dice``, the one that reviews the fewest
cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from quality.predictor import ImageStats
from quality.types import (
    CaseQuality,
    DicePrediction,
    Route,
    SamplingMethod,
    StructureQuality,
    StructureRca,
    StructureUncertainty,
)


@dataclass(frozen=True)
class GateLimits:
    """What the gate compares against (written into the model card by calibration)."""

    predicted_low_min: float
    rca_min: float
    volume_range: dict[str, tuple[float, float]] = field(default_factory=dict)
    spacing_range: tuple[tuple[float, float], ...] = ()
    image_mean_range: tuple[float, float] = (0.0, 1.0)
    image_std_range: tuple[float, float] = (0.0, 1.0)
    saturated_max: float = 1.0
    modality: str = ""
    unit: str = "ml"
    #: per structure name: (predicted_low_min, rca_min); a structure not named uses the two above
    structures: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: added to every threshold (negative: fewer reviews) to keep within a review budget
    shift: float = 0.0

    def thresholds(self, name: str) -> tuple[float, float]:
        """(predicted Dice lower bound minimum, RCA minimum) of structure ``name``, budget shift applied."""
        low, rca = self.structures.get(name, (self.predicted_low_min, self.rca_min))
        return low + self.shift, rca + self.shift


def input_reasons(modality: str, spacing: Sequence[float], stats: ImageStats, limits: GateLimits) -> list[str]:
    """Reasons the image itself is outside what the model was made for (empty if none)."""
    reasons = []
    if limits.modality and modality != limits.modality:
        reasons.append(f"input: modality {modality}, the model expects {limits.modality}")
    for axis, (s, (lo, hi)) in enumerate(zip(spacing, limits.spacing_range, strict=False)):
        if not lo <= s <= hi:
            reasons.append(f"input: spacing {s:.2f} mm on axis {axis} outside the expected {lo:.2f}-{hi:.2f} mm")
    lo, hi = limits.image_mean_range
    if not lo <= stats.mean <= hi:
        reasons.append(f"input: mean normalised intensity {stats.mean:.3f} outside the expected {lo:.3f}-{hi:.3f}")
    lo, hi = limits.image_std_range
    if not lo <= stats.std <= hi:
        reasons.append(f"input: intensity spread {stats.std:.3f} outside the expected {lo:.3f}-{hi:.3f}")
    if stats.saturated > limits.saturated_max:
        reasons.append(
            f"input: {stats.saturated:.1%} of the body at the top of the intensity window "
            f"(expected at most {limits.saturated_max:.1%})"
        )
    return reasons


def plausibility_reasons(u: StructureUncertainty, limits: GateLimits) -> list[str]:
    if u.volume <= 0:
        return [f"{u.name}: missing (nothing segmented)"]
    if u.name in limits.volume_range:
        lo, hi = limits.volume_range[u.name]
        if not lo <= u.volume <= hi:
            return [
                f"{u.name}: implausible size {u.volume:.1f} {limits.unit} (expected {lo:.1f}-{hi:.1f} {limits.unit})"
            ]
    return []


def estimate_reasons(
    name: str, rca: StructureRca | None, prediction: DicePrediction | None, limits: GateLimits
) -> list[str]:
    """Reasons from the structure's estimates: its predicted Dice lower bound or its RCA (calibrated when the
    model has an RCA calibration) under the structure's threshold."""
    reasons = []
    low_min, rca_min = limits.thresholds(name)
    if prediction is not None and prediction.low < low_min:
        reasons.append(
            f"{name}: predicted Dice {prediction.dice:.2f} ({prediction.coverage:.0%} interval "
            f"{prediction.low:.2f}-{prediction.high:.2f}), lower bound under {low_min:.2f}"
        )
    if rca is not None and math.isfinite(rca.dice) and rca.dice < rca_min:
        kind = (
            f"calibrated RCA estimate {rca.dice:.2f} (raw {rca.max_dice:.2f})"
            if rca.calibrated
            else (f"RCA estimate {rca.max_dice:.2f} (raw)")
        )
        reasons.append(f"{name}: {kind} under {rca_min:.2f}")
    return reasons


def decide(
    *,
    structures: Sequence[StructureUncertainty],
    rca: dict[int, StructureRca],
    predictions: dict[int, DicePrediction],
    input_problems: Sequence[str],
    limits: GateLimits | None,
    method: SamplingMethod,
    samples: int,
) -> CaseQuality:
    """The case's route and reasons. Without limits (an uncalibrated model) every case goes to REVIEW."""
    out = []
    for u in structures:
        reasons: list[str] = []
        if limits is not None:
            reasons = plausibility_reasons(u, limits) + estimate_reasons(
                u.name, rca.get(u.label), predictions.get(u.label), limits
            )
        out.append(
            StructureQuality(
                label=u.label,
                name=u.name,
                uncertainty=u,
                rca=rca.get(u.label),
                prediction=predictions.get(u.label),
                route=Route.REVIEW if reasons else Route.PASS,
                reasons=tuple(reasons),
            )
        )
    case_reasons = list(input_problems) + [r for s in out for r in s.reasons]
    if limits is None:
        case_reasons.append("the model has no quality calibration: every case is reviewed")
    return CaseQuality(
        route=Route.REVIEW if case_reasons else Route.PASS,
        reasons=tuple(case_reasons),
        structures=tuple(out),
        method=method,
        samples=samples,
    )


@dataclass(frozen=True)
class GateCalibration:
    """The thresholds chosen and what they achieved on the calibration cases."""

    predicted_low_min: float
    rca_min: float
    caught: float
    review_rate: float
    failures: int
    cases: int


def calibrate(
    case_ids: Sequence[str],
    true_dice: np.ndarray,
    predicted_low: np.ndarray,
    rca_max: np.ndarray,
    other_flag: np.ndarray,
    *,
    failure_dice: float = 0.8,
    target_catch: float = 0.95,
) -> GateCalibration:
    """Thresholds that catch ``target_catch`` of failing structures while reviewing the fewest cases.

    Parameters
    ----------
    case_ids
        the case of each structure row.
    true_dice, predicted_low, rca_max
        per structure row: true Dice, predicted Dice lower bound, RCA max Dice (NaN if not computed).
    other_flag
        per structure row: True where the case is reviewed whatever the thresholds (input or plausibility).

    A failing structure counts as caught when its case goes to review.
    """
    ids = np.asarray(case_ids)
    cases, case_index = np.unique(ids, return_inverse=True)
    failing = true_dice < failure_dice
    rca = np.nan_to_num(rca_max, nan=1.0)
    candidates_pred = np.unique(np.concatenate([[0.0], np.round(predicted_low, 3) + 1e-6]))
    candidates_rca = np.unique(np.concatenate([[0.0], np.round(rca, 3) + 1e-6]))
    best: GateCalibration | None = None
    for tp in candidates_pred:
        flag_p = predicted_low < tp
        for tr in candidates_rca:
            flagged = flag_p | (rca < tr) | other_flag
            reviewed = np.zeros(len(cases), dtype=bool)
            np.logical_or.at(reviewed, case_index, flagged)
            caught = float(reviewed[case_index][failing].mean()) if failing.any() else 1.0
            rate = float(reviewed.mean())
            if caught + 1e-9 < target_catch:
                continue
            if (
                best is None
                or rate < best.review_rate - 1e-12
                or (math.isclose(rate, best.review_rate) and caught > best.caught)
            ):
                best = GateCalibration(float(tp), float(tr), caught, rate, int(failing.sum()), len(cases))
    if best is None:  # only reachable when even reviewing everything misses (cannot happen): review all
        best = GateCalibration(1.0, 1.0, 1.0, 1.0, int(failing.sum()), len(cases))
    return best
