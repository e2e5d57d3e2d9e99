"""Audit a scenario's frame without ground truth, measure its gaps, and summarise over scenarios.

The audit is :func:`fairness_registry.audit.compute.compute_audit` (alerts in ``result["alerts"]``). Where
that function is not available, :func:`_fallback_alerts` applies the same disparity rule to group means:
a group's estimated mean Dice below the best group's by more than ``gap_alert`` and a Holm-corrected
Mann-Whitney p below ``p_alert``.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from fairnode.bias_discovery.scenarios import ATTRIBUTES, Scenario

logger = logging.getLogger(__name__)

#: estimators of Dice without ground truth: name -> audit-frame column
ESTIMATORS: dict[str, str] = {"rca": "rca_dice", "predictor": "predicted_dice"}
#: the raw RCA (max Dice over the references, before the per-structure calibration), reported beside them
RAW_RCA = "rca_raw_dice"
#: a true gap at least this large must be found with the right sign
SIGN_THRESHOLD = 0.02
GAP_ALERT = 0.03
P_ALERT = 0.05
MIN_CELL = 10


@dataclass
class ScenarioResult:
    """What one scenario gave: signed gaps (group minus reference), alerts, counts."""

    name: str
    kind: str
    family: str
    description: str
    attribute: str
    group: str
    expect_bias: bool
    n_group: int
    n_reference: int
    true_gap: float
    true_gap_ci: tuple[float, float]
    rca_gap: float
    predictor_gap: float
    true_mean: dict[str, float]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    audit_engine: str = ""
    model: str = ""
    #: the groups of the scenario's attribute the audit reported (not suppressed as too small)
    reported_groups: list[str] = field(default_factory=list)
    #: the gap of the raw RCA (before per-structure calibration); NaN when the frame lacks it
    rca_raw_gap: float = math.nan
    #: per estimator, mean (estimate - true Dice) of the group and of the reference: its bias in each
    estimator_bias: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def sign_checked(self) -> bool:
        return abs(self.true_gap) > SIGN_THRESHOLD

    def sign_agrees(self, estimator: str) -> bool | None:
        """Whether ``estimator``'s gap has the true gap's sign (None when the true gap is too small to say)."""
        if not self.sign_checked:
            return None
        return bool(np.sign(self.estimated_gap(estimator)) == np.sign(self.true_gap))

    def estimated_gap(self, estimator: str) -> float:
        """The gap ``estimator`` (``rca``, ``rca_raw`` or ``predictor``) found."""
        gaps = {"rca": self.rca_gap, "rca_raw": self.rca_raw_gap, "predictor": self.predictor_gap}
        if estimator not in gaps:
            raise ValueError(f"estimator {estimator!r} is not one of {sorted(gaps)}")
        return gaps[estimator]

    def alerts_on_attribute(self) -> list[dict[str, Any]]:
        return [a for a in self.alerts if a.get("kind") == "disparity" and a.get("attribute") == self.attribute]


# ----------------------------------------------------------------------------------------------- audit
def run_audit(frame: pd.DataFrame, *, min_cell: int = MIN_CELL, min_cases: int = 20) -> tuple[dict[str, Any], str]:
    """Audit ``frame`` (estimates only); returns the audit result (with ``alerts``) and which engine ran.

    ``min_cell``: smallest reported group (patients); ``min_cases``: fewest patients an audit is made from.
    """
    try:
        compute = importlib.import_module("fairness_registry.audit.compute")
        settings_mod = importlib.import_module("fairness_registry.audit.settings")
    except ImportError:
        logger.warning("fairness_registry.audit.compute is not available; using the fallback disparity rule")
        return {"alerts": _fallback_alerts(frame, min_cell)}, "fallback"
    settings = settings_mod.AuditSettings(gap_alert=GAP_ALERT, p_alert=P_ALERT, min_cell=min_cell, min_cases=min_cases)
    result: dict[str, Any] = compute.compute_audit(frame, settings=settings)
    return result, "compute_audit"


def _fallback_alerts(frame: pd.DataFrame, min_cell: int = MIN_CELL) -> list[dict[str, Any]]:
    """Disparity alerts from group means: gap to the best group > :data:`GAP_ALERT` and Holm p < :data:`P_ALERT`.

    Per attribute and estimator, each structure's groups of at least ``min_cell`` patients are compared
    with the structure's best group (Mann-Whitney U); the p-values of one attribute and estimator are
    Holm-corrected together.
    """
    alerts: list[dict[str, Any]] = []
    for attribute in ATTRIBUTES:
        for estimator, column in ESTIMATORS.items():
            tests: list[tuple[str, str, float, float]] = []  # structure, group, gap, p
            for structure, rows in frame.groupby("structure"):
                groups = {
                    str(g): v[column].dropna().to_numpy()
                    for g, v in rows.groupby(attribute)
                    if v["pseudonym"].nunique() >= min_cell
                }
                groups = {g: v for g, v in groups.items() if len(v)}
                if len(groups) < 2:
                    continue
                best = max(groups, key=lambda g: float(np.mean(groups[g])))
                for g, values in groups.items():
                    if g == best:
                        continue
                    gap = float(np.mean(groups[best]) - np.mean(values))
                    p = float(stats.mannwhitneyu(groups[best], values).pvalue)
                    tests.append((str(structure), g, gap, p))
            if not tests:
                continue
            corrected = multipletests([t[3] for t in tests], method="holm")[1]
            for (structure, g, gap, _), p in zip(tests, corrected, strict=True):
                if gap > GAP_ALERT and p < P_ALERT:
                    alerts.append(
                        {
                            "kind": "disparity",
                            "attribute": attribute,
                            "group": g,
                            "structure": structure,
                            "estimator": estimator,
                            "value": round(gap, 4),
                            "limit": GAP_ALERT,
                            "message": f"{attribute}={g}: estimated {structure} Dice {gap:.3f} below the best "
                            f"group (Holm p={p:.3g})",
                        }
                    )
    return alerts


# ------------------------------------------------------------------------------------------------ gaps
def _case_means(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame.groupby("pseudonym")[column].mean()


def _split(frame: pd.DataFrame, scenario: Scenario) -> tuple[pd.DataFrame, pd.DataFrame]:
    values = frame[scenario.attribute].astype(str)
    in_group = values == scenario.group
    in_reference = values.isin(scenario.reference) if scenario.reference else ~in_group
    return frame[in_group], frame[in_reference]


def signed_gap(frame: pd.DataFrame, scenario: Scenario, column: str) -> float:
    """Mean ``column`` of the scenario's group minus that of its reference groups (cases weigh equally)."""
    group, reference = _split(frame, scenario)
    if group.empty or reference.empty:
        raise ValueError(
            f"scenario {scenario.name}: the cohort has no {'group' if group.empty else 'reference'} cases for "
            f"{scenario.attribute}={scenario.group}; draw a larger cohort"
        )
    return float(_case_means(group, column).mean() - _case_means(reference, column).mean())


def bootstrap_ci(
    frame: pd.DataFrame, scenario: Scenario, column: str, n: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Patient-level bootstrap 95% interval of :func:`signed_gap` (resampling each side's patients)."""
    group, reference = _split(frame, scenario)
    a = _case_means(group, column).to_numpy()
    b = _case_means(reference, column).to_numpy()
    rng = np.random.default_rng(seed)
    gaps = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(n)]
    lo, hi = np.percentile(gaps, [2.5, 97.5])
    return (round(float(lo), 4), round(float(hi), 4))


def evaluate(
    scenario: Scenario, truth_frame: pd.DataFrame, model: str, *, min_cell: int = MIN_CELL, min_cases: int = 20
) -> ScenarioResult:
    """Audit the scenario without ground truth and compare the estimated gaps with the true one.

    ``truth_frame`` holds the true Dice; the audit is given the same frame with the truth removed
    (``min_cell``, ``min_cases``: see :func:`run_audit`).
    """
    blind = truth_frame.assign(true_dice=np.nan)
    result, engine = run_audit(blind, min_cell=min_cell, min_cases=min_cases)
    group, reference = _split(truth_frame, scenario)
    return ScenarioResult(
        name=scenario.name,
        kind=scenario.kind,
        family=scenario.family,
        description=scenario.description,
        attribute=scenario.attribute,
        group=scenario.group,
        expect_bias=scenario.expect_bias,
        n_group=int(group["pseudonym"].nunique()),
        n_reference=int(reference["pseudonym"].nunique()),
        true_gap=round(signed_gap(truth_frame, scenario, "true_dice"), 4),
        true_gap_ci=bootstrap_ci(truth_frame, scenario, "true_dice"),
        rca_gap=round(signed_gap(truth_frame, scenario, "rca_dice"), 4),
        predictor_gap=round(signed_gap(truth_frame, scenario, "predicted_dice"), 4),
        true_mean={
            "group": round(float(_case_means(group, "true_dice").mean()), 4),
            "reference": round(float(_case_means(reference, "true_dice").mean()), 4),
        },
        alerts=[_with_truth(a, truth_frame, min_cell) for a in result.get("alerts", [])],
        rca_raw_gap=round(signed_gap(truth_frame, scenario, RAW_RCA), 4) if RAW_RCA in truth_frame else math.nan,
        estimator_bias=_bias(group, reference, truth_frame),
        audit_engine=engine,
        model=model,
        reported_groups=_reported(result, blind, scenario.attribute, min_cell),
    )


def _bias(group: pd.DataFrame, reference: pd.DataFrame, frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per estimator, its mean error (estimate minus true Dice, over cases) in the group and the reference."""
    out: dict[str, dict[str, float]] = {}
    for name, column in {**ESTIMATORS, "rca_raw": RAW_RCA}.items():
        if column not in frame:
            continue
        out[name] = {
            side: round(float((_case_means(rows, column) - _case_means(rows, "true_dice")).mean()), 4)
            for side, rows in (("group", group), ("reference", reference))
        }
    return out


def _with_truth(alert: dict[str, Any], frame: pd.DataFrame, min_cell: int) -> dict[str, Any]:
    """``alert`` with the true gap of its cell: the best group's true mean Dice minus the alerted group's.

    ``confirmed`` says whether the true gap also exceeds :data:`GAP_ALERT` (else the alert is a false alarm
    by the audit's own rule). Only disparity alerts are scored.
    """
    if alert.get("kind") != "disparity" or alert.get("attribute") not in frame.columns:
        return dict(alert)
    rows = frame[frame["structure"] == alert.get("structure")]
    means = {
        str(g): float(v["true_dice"].mean())
        for g, v in rows.groupby(alert["attribute"])
        if v["pseudonym"].nunique() >= min_cell
    }
    group = str(alert.get("group"))
    if group not in means:
        return dict(alert)
    true_gap = max(means.values()) - means[group]
    return {**alert, "true_gap": round(true_gap, 4), "confirmed": bool(true_gap > GAP_ALERT)}


def _reported(result: dict[str, Any], frame: pd.DataFrame, attribute: str, min_cell: int) -> list[str]:
    """Groups of ``attribute`` the audit reported (its counts), else those with at least ``min_cell`` patients."""
    counts = result.get("counts", {}).get(attribute)
    if counts is not None:
        return sorted(str(c["group"]) for c in counts["cells"])
    patients = frame.groupby(attribute)["pseudonym"].nunique()
    return sorted(str(g) for g, n in patients.items() if n >= min_cell)


# --------------------------------------------------------------------------------------------- summary
def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 3 or float(np.std(x)) == 0 or float(np.std(y)) == 0:
        return None
    return round(float(stats.pearsonr(x, y).statistic), 4)


def summarise(results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """The experiment's figures over scenarios: Pearson r, sign agreement, false alarms, which estimator wins."""
    true = [r.true_gap for r in results]
    out: dict[str, Any] = {"n_scenarios": len(results)}
    for est in (*ESTIMATORS, "rca_raw"):
        gaps = [r.estimated_gap(est) for r in results]
        if any(math.isnan(g) for g in gaps):
            continue
        checked = [r.sign_agrees(est) for r in results if r.sign_checked]
        errors = [abs(g - t) for g, t in zip(gaps, true, strict=True)]
        slope = float(np.polyfit(true, gaps, 1)[0]) if len(results) >= 2 and np.std(true) > 0 else math.nan
        out[est] = {
            "pearson_r": _pearson(true, gaps),
            "sign_agreement": f"{sum(bool(c) for c in checked)}/{len(checked)}",
            "mean_abs_error": round(float(np.mean(errors)), 4) if errors else None,
            "slope_vs_true": None if math.isnan(slope) else round(slope, 3),
        }
    closer = [abs(r.predictor_gap - r.true_gap) < abs(r.rca_gap - r.true_gap) for r in results]
    out["predictor_closer"] = f"{sum(closer)}/{len(closer)}"
    unbiased = [r for r in results if not r.expect_bias]
    out["unbiased_alerts"] = {r.name: len([a for a in r.alerts if a.get("kind") == "disparity"]) for r in unbiased}
    # a scenario unbiased by design may still hold a real gap elsewhere (a small model worse on one BMI band):
    # an alert the truth confirms there is a finding, not a false alarm
    out["unbiased_false_alerts"] = {
        r.name: len([a for a in r.alerts if a.get("kind") == "disparity" and not a.get("confirmed", False)])
        for r in unbiased
    }
    disparity = [a for r in results for a in r.alerts if a.get("kind") == "disparity" and "confirmed" in a]
    out["alerts_confirmed_by_truth"] = f"{sum(a['confirmed'] for a in disparity)}/{len(disparity)}"
    out["alerts_on_scenario_attribute"] = {r.name: len(r.alerts_on_attribute()) for r in results}
    out["targets"] = {
        "pearson_r_at_least_0.9": {est: (out[est]["pearson_r"] or 0) >= 0.9 for est in ESTIMATORS},
        "no_alert_when_unbiased": all(v == 0 for v in out["unbiased_alerts"].values()),
        "no_false_alert_when_unbiased": all(v == 0 for v in out["unbiased_false_alerts"].values()),
        "predictor_closer_than_rca": out["predictor"]["mean_abs_error"] is not None
        and out["rca"]["mean_abs_error"] is not None
        and out["predictor"]["mean_abs_error"] < out["rca"]["mean_abs_error"],
        "signs_right": all(r.sign_agrees("predictor") is not False for r in results),
    }
    return out
