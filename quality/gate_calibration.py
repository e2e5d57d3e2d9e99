"""Per-structure gate thresholds from a calibration cohort, the review budget, and risk-coverage curves.

Each structure ``s`` is flagged (REVIEW) when it is implausible (missing, size out of range), when its
predicted Dice lower bound is under ``predicted_low_min[s]``, or when its RCA estimate (calibrated) is under
``rca_min[s]``; a case is reviewed when any structure is flagged or its input is out of range.

:func:`calibrate_structures` chooses each structure's pair on calibration rows whose estimates are out of
sample (the predictor's out-of-fold estimates; a threshold on calibrated RCA is one on raw RCA, the map being
monotone): the pair that flags the fewest of that
structure's rows while flagging at least ``min(n, ceil((n + 1) * target_catch))`` of its ``n`` failing rows
(true Dice under ``failure_dice``; the finite-sample rank of split-conformal prediction, so that the target is
met on new cases with the stated confidence, not only on the calibration rows). Candidate thresholds are the
midpoints between neighbouring observed values; among equally good pairs, the higher ones (a margin towards
the next passing structure). A structure with fewer than ``min_failures`` failing rows gets the pair chosen on
all structures pooled. Each structure records how many cases and failures its pair rests on, the share
caught and its one-sided 95% Clopper-Pearson lower bound (statsmodels).

A review budget (at most a share of cases reviewed) moves every threshold down by one ``shift`` until the
calibration cases reviewed fit the budget. A calibration cohort is a stress cohort, with far more failing
cases than a hospital's day, so the share is taken at an expected prevalence ``p`` of cases with a failing
structure: ``p * (share of failing cases reviewed) + (1 - p) * (share of the other cases reviewed)``.
:func:`risk_coverage` gives, for a range of shifts, the share of cases reviewed and the share of failing
structures caught, which is the curve the validation plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from statsmodels.stats.proportion import proportion_confint

#: shifts of every threshold over which the risk-coverage curve and the budget search run
SHIFTS: tuple[float, ...] = tuple(round(x, 3) for x in np.arange(-0.6, 0.601, 0.01))


@dataclass(frozen=True)
class GateRow:
    """One structure of one case as the gate sees it (estimates out of sample)."""

    case: str
    name: str
    true_dice: float
    predicted_low: float  # NaN: no prediction
    rca: float  # the gate's RCA value (calibrated when available); NaN: not computed
    structure_flag: bool  # implausible (missing or size out of range): flagged whatever the thresholds
    case_flag: bool  # the case's input is out of range: reviewed whatever the thresholds


@dataclass(frozen=True)
class StructureThresholds:
    name: str
    predicted_low_min: float
    rca_min: float
    cases: int
    failures: int
    caught: float | None
    caught_low95: float | None
    flagged: float
    pooled: bool


@dataclass(frozen=True)
class StructureGate:
    """What :func:`calibrate_structures` chose and what it achieved on the calibration rows."""

    structures: dict[str, StructureThresholds]
    pooled: tuple[float, float]
    shift: float
    budget: float | None
    prevalence: float | None
    expected_review_rate: float  # at the expected prevalence (= review_rate without one)
    review_rate: float  # share of cases reviewed (shift applied)
    caught: float  # share of failing structures whose case was reviewed
    structure_review_rate: float  # share of structures flagged
    structure_caught: float  # share of failing structures flagged themselves
    failures: int
    cases: int

    def thresholds(self) -> dict[str, tuple[float, float]]:
        return {n: (t.predicted_low_min, t.rca_min) for n, t in self.structures.items()}


def _candidates(values: np.ndarray) -> np.ndarray:
    """0 (flag nothing) and the midpoints between neighbouring distinct finite values, and one above the top."""
    v = np.unique(np.round(values[np.isfinite(values)], 4))
    mids = (v[1:] + v[:-1]) / 2 if len(v) > 1 else np.array([])
    top = [v[-1] + 1e-3] if len(v) else []
    return np.unique(np.concatenate([[0.0], mids, top]))


def needed(failures: int, target: float) -> int:
    """Failing rows to flag: the split-conformal rank ``ceil((n + 1) * target)``, at most ``n``."""
    return min(failures, math.ceil((failures + 1) * target)) if failures else 0


def _choose(
    low: np.ndarray, rca: np.ndarray, fixed: np.ndarray, failing: np.ndarray, target: float
) -> tuple[float, float]:
    """The pair flagging the fewest rows among those flagging enough failing rows (ties: the higher pair)."""
    need = needed(int(failing.sum()), target)
    low_c, rca_c = _candidates(low), _candidates(rca)
    lo = np.nan_to_num(low, nan=1.0)
    rc = np.nan_to_num(rca, nan=1.0)
    flag_low = lo[None, :] < low_c[:, None]  # (candidates, rows)
    flag_rca = rc[None, :] < rca_c[:, None]
    best: tuple[int, float, float, float] | None = None  # (flagged, -sum, low, rca)
    for i, tp in enumerate(low_c):
        flagged = flag_low[i][None, :] | flag_rca | fixed[None, :]
        caught = flagged[:, failing].sum(axis=1)
        count = flagged.sum(axis=1)
        for j in np.flatnonzero(caught >= need):
            key = (int(count[j]), -(float(tp) + float(rca_c[j])))
            if best is None or key < best[:2]:
                best = (key[0], key[1], float(tp), float(rca_c[j]))
    if best is None:  # unreachable: the top candidates flag every row
        return 1.0, 1.0
    return round(best[2], 4), round(best[3], 4)


def flags(
    rows: Sequence[GateRow], thresholds: dict[str, tuple[float, float]], pooled: tuple[float, float], shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the structure flagged, and its case reviewed, under ``thresholds`` moved by ``shift``."""
    tp = np.array([thresholds.get(r.name, pooled)[0] for r in rows]) + shift
    tr = np.array([thresholds.get(r.name, pooled)[1] for r in rows]) + shift
    low = np.nan_to_num(np.array([r.predicted_low for r in rows], dtype=float), nan=1.0)
    rca = np.nan_to_num(np.array([r.rca for r in rows], dtype=float), nan=1.0)
    structure = (low < tp) | (rca < tr) | np.array([r.structure_flag for r in rows], dtype=bool)
    cases = [r.case for r in rows]
    reviewed: dict[str, bool] = {}
    for case, flagged, r in zip(cases, structure, rows, strict=True):
        reviewed[case] = reviewed.get(case, False) or bool(flagged) or r.case_flag
    return structure, np.array([reviewed[c] for c in cases], dtype=bool)


def outcome(
    rows: Sequence[GateRow], structure: np.ndarray, case: np.ndarray, failure_dice: float
) -> dict[str, float | None]:
    """Shares reviewed and caught, at case and at structure level."""
    failing = np.array([r.true_dice < failure_dice for r in rows], dtype=bool)
    per_case: dict[str, bool] = {}
    failing_case: dict[str, bool] = {}
    for r, c, f in zip(rows, case, failing, strict=True):
        per_case[r.case] = bool(c)
        failing_case[r.case] = failing_case.get(r.case, False) or bool(f)
    n_fail_cases = sum(failing_case.values())
    return {
        "review_rate": float(np.mean(list(per_case.values()))) if per_case else None,
        "caught": float(case[failing].mean()) if failing.any() else None,
        "structure_review_rate": float(structure.mean()) if len(rows) else None,
        "structure_caught": float(structure[failing].mean()) if failing.any() else None,
        "failing_cases": float(n_fail_cases),
        "failing_cases_caught": (
            float(sum(per_case[k] for k, v in failing_case.items() if v) / n_fail_cases) if n_fail_cases else None
        ),
    }


def risk_coverage(
    rows: Sequence[GateRow],
    thresholds: dict[str, tuple[float, float]],
    pooled: tuple[float, float],
    failure_dice: float = 0.8,
    shifts: Sequence[float] = SHIFTS,
) -> list[dict[str, float | None]]:
    """For each shift of every threshold: the shares reviewed and caught (case and structure level)."""
    out = []
    for shift in shifts:
        s, c = flags(rows, thresholds, pooled, shift)
        out.append({"shift": float(shift), **outcome(rows, s, c, failure_dice)})
    return out


def expected_review_rate(
    rows: Sequence[GateRow], case: np.ndarray, failure_dice: float, prevalence: float | None
) -> float:
    """Share of cases reviewed; at ``prevalence`` of failing cases when given (see the module docstring)."""
    reviewed: dict[str, bool] = {}
    failing: dict[str, bool] = {}
    for r, c in zip(rows, case, strict=True):
        reviewed[r.case] = bool(c)
        failing[r.case] = failing.get(r.case, False) or r.true_dice < failure_dice
    if prevalence is None or all(failing.values()) or not any(failing.values()):
        return float(np.mean(list(reviewed.values())))
    bad = np.mean([reviewed[k] for k, f in failing.items() if f])
    good = np.mean([reviewed[k] for k, f in failing.items() if not f])
    return float(prevalence * bad + (1 - prevalence) * good)


def _low95(count: int, n: int) -> float | None:
    if n == 0:
        return None
    lower, _ = proportion_confint(count, n, alpha=0.10, method="beta")  # one-sided 95%
    return round(float(lower), 4)


def calibrate_structures(
    rows: Sequence[GateRow],
    *,
    failure_dice: float = 0.8,
    target_catch: float = 0.95,
    min_failures: int = 5,
    budget: float | None = None,
    prevalence: float | None = None,
) -> StructureGate:
    """Per-structure thresholds (see the module docstring), moved down to fit ``budget`` when it binds."""
    if not rows:
        raise ValueError("no calibration rows to choose gate thresholds from")
    if budget is not None and not 0 < budget <= 1:
        raise ValueError(f"review budget {budget} must be a share of cases in (0, 1]")
    if prevalence is not None and not 0 < prevalence < 1:
        raise ValueError(f"expected prevalence {prevalence} must be a share of cases in (0, 1)")
    names = sorted({r.name for r in rows})

    def arrays(sel: Sequence[GateRow]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.array([r.predicted_low for r in sel], dtype=float),
            np.array([r.rca for r in sel], dtype=float),
            np.array([r.structure_flag for r in sel], dtype=bool),
            np.array([r.true_dice < failure_dice for r in sel], dtype=bool),
        )

    pooled = _choose(*arrays(rows), target_catch)
    chosen: dict[str, tuple[float, float]] = {}
    own: dict[str, bool] = {}
    for name in names:
        sel = [r for r in rows if r.name == name]
        low, rca, fixed, failing = arrays(sel)
        own[name] = int(failing.sum()) >= min_failures
        chosen[name] = _choose(low, rca, fixed, failing, target_catch) if own[name] else pooled
    shift = 0.0
    if budget is not None:  # the largest shift (from 0 down) that keeps the calibration cases within it
        for candidate in sorted((s for s in SHIFTS if s <= 0), reverse=True):
            structure, case = flags(rows, chosen, pooled, candidate)
            rate = expected_review_rate(rows, case, failure_dice, prevalence)
            shift = candidate
            if rate <= budget + 1e-9:
                break
    structure, case = flags(rows, chosen, pooled, shift)
    summary = outcome(rows, structure, case, failure_dice)
    per: dict[str, StructureThresholds] = {}
    for name in names:
        idx = [i for i, r in enumerate(rows) if r.name == name]
        failing = np.array([rows[i].true_dice < failure_dice for i in idx], dtype=bool)
        flagged = structure[idx]
        n_fail = int(failing.sum())
        hit = int(flagged[failing].sum())
        per[name] = StructureThresholds(
            name=name,
            predicted_low_min=chosen[name][0],
            rca_min=chosen[name][1],
            cases=len(idx),
            failures=n_fail,
            caught=round(hit / n_fail, 4) if n_fail else None,
            caught_low95=_low95(hit, n_fail),
            flagged=round(float(flagged.mean()), 4),
            pooled=not own[name],
        )
    failing_all = np.array([r.true_dice < failure_dice for r in rows], dtype=bool)
    return StructureGate(
        structures=per,
        pooled=pooled,
        shift=float(shift),
        budget=budget,
        prevalence=prevalence,
        expected_review_rate=round(expected_review_rate(rows, case, failure_dice, prevalence), 4),
        review_rate=round(summary["review_rate"] or 0.0, 4),
        caught=round(summary["caught"] if summary["caught"] is not None else 1.0, 4),
        structure_review_rate=round(summary["structure_review_rate"] or 0.0, 4),
        structure_caught=round(summary["structure_caught"] if summary["structure_caught"] is not None else 1.0, 4),
        failures=int(failing_all.sum()),
        cases=len({r.case for r in rows}),
    )
