"""Per-structure gate thresholds, the review budget and risk-coverage: on hand-made calibration rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quality.gate_calibration import (
    GateRow,
    calibrate_structures,
    expected_review_rate,
    flags,
    needed,
    risk_coverage,
)


def _rows(n_cases: int = 60, seed: int = 0) -> list[GateRow]:
    """Two structures: 'good' rarely fails and its predictor tracks it; 'bad' fails often, RCA tracks it."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_cases):
        case = f"c{i}"
        good = float(np.clip(rng.normal(0.92, 0.04), 0, 1)) if i % 10 else 0.6
        bad = float(np.clip(rng.uniform(0.5, 1.0), 0, 1))
        rows.append(GateRow(case, "good", good, good - 0.1 + rng.normal(0, 0.01), math.nan, False, False))
        rows.append(GateRow(case, "bad", bad, 0.3, bad + rng.normal(0, 0.02), False, False))
    return rows


def test_each_structure_gets_thresholds_that_catch_its_failures() -> None:
    rows = _rows()
    g = calibrate_structures(rows, failure_dice=0.8, target_catch=0.95, min_failures=5)
    good, bad = g.structures["good"], g.structures["bad"]
    assert not good.pooled and not bad.pooled
    assert good.caught == 1.0 and bad.caught is not None and bad.caught >= 0.95
    # 'bad' is judged on RCA (its predictor says nothing), 'good' on the predicted lower bound
    assert bad.rca_min > 0.7 and bad.predicted_low_min <= 0.3
    assert 0.5 < good.predicted_low_min < 0.8
    # the thresholds flag few passing structures: 'good' only its failures
    assert good.flagged == pytest.approx(0.1, abs=0.02)
    assert good.caught_low95 is not None and good.caught_low95 < good.caught
    assert g.cases == 60 and g.failures == sum(r.true_dice < 0.8 for r in rows)
    assert g.structure_caught >= 0.95 and g.caught >= g.structure_caught


def test_a_structure_with_few_failures_uses_the_pooled_thresholds() -> None:
    rows = _rows()
    g = calibrate_structures(rows, min_failures=1000)
    assert all(t.pooled for t in g.structures.values())
    assert {(t.predicted_low_min, t.rca_min) for t in g.structures.values()} == {g.pooled}


def test_conformal_rank_of_failures_to_catch() -> None:
    assert needed(0, 0.95) == 0
    assert needed(10, 0.95) == 10  # fewer than 19 failures: all of them
    assert needed(40, 0.95) == 39


def test_review_budget_moves_all_thresholds_down() -> None:
    rows = _rows()
    free = calibrate_structures(rows)
    tight = calibrate_structures(rows, budget=0.3)
    assert free.review_rate > 0.3
    assert tight.shift < 0 and tight.review_rate <= 0.3 + 1e-9
    assert tight.caught < free.caught
    # at an expected prevalence the budget counts failing and passing cases at the day's mix
    mixed = calibrate_structures(rows, budget=0.3, prevalence=0.1)
    assert mixed.expected_review_rate <= 0.3 + 1e-9 and mixed.shift >= tight.shift
    with pytest.raises(ValueError, match="review budget"):
        calibrate_structures(rows, budget=0.0)


def test_risk_coverage_is_monotone_and_flags_follow_the_thresholds() -> None:
    rows = _rows()
    g = calibrate_structures(rows)
    curve = risk_coverage(rows, g.thresholds(), g.pooled)
    reviewed = [c["review_rate"] for c in curve]
    caught = [c["caught"] for c in curve]
    assert reviewed == sorted(reviewed) and caught == sorted(caught)  # type: ignore[type-var]
    assert reviewed[0] == 0.0 and reviewed[-1] == 1.0
    structure, case = flags(rows, g.thresholds(), g.pooled)
    assert case.sum() >= structure.sum() / 2
    # an input problem reviews the case whatever the thresholds; an implausible structure is flagged
    odd = [GateRow("x", "good", 0.95, 0.9, math.nan, True, False), GateRow("y", "bad", 0.95, 0.3, 0.99, False, True)]
    s, c = flags(odd, g.thresholds(), g.pooled)
    assert list(s) == [True, False] and list(c) == [True, True]
    assert expected_review_rate(odd, c, 0.8, 0.2) == 1.0
