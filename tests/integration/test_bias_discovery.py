"""Reduced bias-discovery experiment: two scenarios, small cohorts, the bundled knee model.

The full experiment is ``benchmarks/bias_discovery.py``. Here a site whose images have low contrast (a real
gap) and a balanced cohort (no gap) go through the node's analysis; the audit, given the estimates only,
must find the gap with the right sign and raise no alert on the balanced cohort, where both groups are
large enough to be reported and tested.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cohorts.shift import ImagingShift
from fairnode.bias_discovery.evaluate import ScenarioResult, evaluate
from fairnode.bias_discovery.run import Schedule, audit_frame, biased_model, run_cohort
from fairnode.bias_discovery.scenarios import SHIFTED_SITE, Scenario, scenarios, site_shift
from inference.model_card import load_card

N_CASES = 20
MIN_CELL = 8
#: a site with a strong acquisition problem, so that 20 patients show the gap
STRONG_SITE = Scenario(
    "site-very-low-contrast",
    "xr-knee",
    "acquisition-shift",
    "bundled model; Cygnus site: contrast 0.5, noise x2",
    "site",
    SHIFTED_SITE,
    site_shift(ImagingShift(contrast=0.5, noise=2.0), "site-very-low-contrast-2site"),
)


def _run(scenario: Scenario, work: Path) -> ScenarioResult:
    model = biased_model(scenario, work, Schedule())
    cases = run_cohort(scenario, model, N_CASES, work / f"{scenario.name}.jsonl")
    card = load_card(model)
    frame = audit_frame(cases, card.name, card.version, with_truth=True)
    return evaluate(scenario, frame, card.name, min_cell=MIN_CELL, min_cases=N_CASES // 2)


@pytest.mark.slow
def test_gap_found_without_truth_and_no_alarm_when_unbiased(tmp_path: Path) -> None:
    biased = _run(STRONG_SITE, tmp_path)
    unbiased = _run(next(s for s in scenarios("xr-knee") if s.name == "balanced"), tmp_path)

    assert biased.audit_engine == "compute_audit"
    # the shifted site really does worse, and the estimates say so without seeing the truth
    assert biased.true_gap < -0.02, biased
    assert biased.predictor_gap < 0, biased
    assert biased.rca_gap < 0, biased

    # the balanced cohort: both sexes reported (not suppressed), so the audit did test them, and no alert
    assert unbiased.reported_groups == ["F", "M"], unbiased
    assert abs(unbiased.true_gap) < 0.02, unbiased
    assert [a for a in unbiased.alerts if a["kind"] == "disparity"] == []
