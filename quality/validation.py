"""How well quality estimates track true Dice on a cohort with ground truth: the figures of a validation.

Input: one :class:`ValidationRow` per structure and case. Output: per structure, overall and per
demographic group: Pearson and Spearman correlation and MAE of the RCA estimate (raw, and as the gate uses
it: calibrated for the structures the model calibrates, raw for the others) and of the predicted Dice against
true Dice, AUROC for detecting Dice < 0.7 and
< 0.8, the conformal coverage, and the gate's outcome at two levels: cases (the share sent to review, the
share of failing structures whose case went to review, the share of cases with a failing structure that went
to review) and structures (the share flagged, the share of failing structures flagged themselves).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import roc_auc_score

GROUP_ATTRIBUTES = ("sex", "age_band", "ethnic_group", "bmi_band", "scenario_group")


@dataclass(frozen=True)
class ValidationRow:
    case: str
    structure: str
    true_dice: float
    rca_dice: float | None
    predicted_dice: float | None
    predicted_low: float | None
    predicted_high: float | None
    route: str
    groups: dict[str, str] = field(default_factory=dict)
    rca_calibrated: float | None = None
    structure_route: str | None = None


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _nan_to_none(v: float) -> float | None:
    return None if not math.isfinite(v) else round(float(v), 4)


def agreement(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """Pearson, Spearman, MAE and AUROCs of an estimate of Dice against true Dice (NaN estimates skipped)."""
    ok = np.isfinite(estimate) & np.isfinite(truth)
    e, t = estimate[ok], truth[ok]
    out: dict[str, float | None] = {"n": float(len(e))}
    varied = len(e) >= 3 and np.std(e) > 0 and np.std(t) > 0
    out["pearson"] = _nan_to_none(float(pearsonr(e, t).statistic)) if varied else None
    out["spearman"] = _nan_to_none(float(spearmanr(e, t).statistic)) if varied else None
    out["mae"] = _nan_to_none(float(np.mean(np.abs(e - t)))) if len(e) else None
    for cut in (0.7, 0.8):
        fail = t < cut
        key = f"auroc_dice_below_{cut}"
        out[key] = _nan_to_none(float(roc_auc_score(fail, -e))) if 0 < fail.sum() < len(fail) else None
    return out


def summarise(rows: Sequence[ValidationRow], failure_dice: float = 0.8) -> dict[str, object]:
    """All figures for ``rows`` (one subset: everything, one structure or one group)."""
    truth = _finite([r.true_dice for r in rows])
    rca = _finite([r.rca_dice for r in rows])
    pred = _finite([r.predicted_dice for r in rows])
    low = _finite([r.predicted_low for r in rows])
    high = _finite([r.predicted_high for r in rows])
    cases: dict[str, bool] = {}
    for r in rows:
        cases[r.case] = cases.get(r.case, False) or r.route == "REVIEW"
    reviewed = np.array([cases[r.case] for r in rows])
    failing = truth < failure_dice
    flagged = np.array([(r.structure_route or r.route) == "REVIEW" for r in rows], dtype=bool)
    failing_case: dict[str, bool] = {}
    for r, f in zip(rows, failing, strict=True):
        failing_case[r.case] = failing_case.get(r.case, False) or bool(f)
    n_failing_cases = sum(failing_case.values())
    calibrated = _finite([r.rca_calibrated for r in rows])
    covered = np.isfinite(low) & (truth >= low - 1e-9) & (truth <= high + 1e-9)
    has_interval = np.isfinite(low)
    return {
        "structures": len(rows),
        "cases": len(cases),
        "true_dice_mean": _nan_to_none(float(np.nanmean(truth))) if len(rows) else None,
        "failures": int(failing.sum()),
        "failing_cases": n_failing_cases,
        "prevalence": _nan_to_none(n_failing_cases / len(cases)) if cases else None,
        "rca": agreement(rca, truth),
        "rca_calibrated": agreement(calibrated, truth) if np.isfinite(calibrated).any() else None,
        "predictor": agreement(pred, truth),
        "review_rate": _nan_to_none(float(np.mean(list(cases.values())))) if cases else None,
        "failures_caught": _nan_to_none(float(reviewed[failing].mean())) if failing.any() else None,
        "failing_cases_caught": (
            _nan_to_none(sum(cases[c] for c, f in failing_case.items() if f) / n_failing_cases)
            if n_failing_cases
            else None
        ),
        "structure_review_rate": _nan_to_none(float(flagged.mean())) if len(rows) else None,
        "structures_caught": _nan_to_none(float(flagged[failing].mean())) if failing.any() else None,
        "coverage": _nan_to_none(float(covered[has_interval].mean())) if has_interval.any() else None,
    }


def report(rows: Sequence[ValidationRow], failure_dice: float = 0.8) -> dict[str, object]:
    """Figures overall, per structure and per demographic group."""
    by_structure = {
        name: summarise([r for r in rows if r.structure == name], failure_dice)
        for name in sorted({r.structure for r in rows})
    }
    by_group: dict[str, dict[str, object]] = {}
    for attr in GROUP_ATTRIBUTES:
        values = sorted({r.groups.get(attr, "") for r in rows} - {""})
        if values:
            by_group[attr] = {v: summarise([r for r in rows if r.groups.get(attr) == v], failure_dice) for v in values}
    return {"overall": summarise(rows, failure_dice), "by_structure": by_structure, "by_group": by_group}
