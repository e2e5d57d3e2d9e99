"""compute_audit on frames with known effects: it finds the planted group, and stays quiet without one."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fairness_registry.audit import AuditError, AuditSettings
from fairness_registry.audit.compute import compute_audit
from fairness_registry.audit.settings import ESTIMATORS
from fairness_registry.audit.synthetic import synthetic_frame
from tests.fairness_registry.audit.conftest import SETTINGS

ALERT_KEYS = {"kind", "attribute", "group", "structure", "estimator", "value", "limit", "message"}


def test_finds_the_planted_group(planted_frame: pd.DataFrame) -> None:
    result = compute_audit(planted_frame, settings=SETTINGS)
    disparity = [a for a in result["alerts"] if a["kind"] == "disparity"]
    assert {(a["attribute"], a["group"]) for a in disparity} == {("ethnic_group", "Black")}
    assert {(a["structure"], a["estimator"]) for a in disparity} == {
        (s, e) for s in ("kidney", "liver", "spleen") for e in ESTIMATORS
    }
    assert all(set(a) == ALERT_KEYS and a["value"] > a["limit"] == SETTINGS.gap_alert for a in disparity)
    # the predictor's gap is larger than RCA's (RCA compresses gaps), and the gap's CI excludes zero
    gaps = {(d["structure"], d["estimator"]): d for d in result["disparities"] if d["attribute"] == "ethnic_group"}
    for structure in ("kidney", "liver", "spleen"):
        assert gaps[(structure, "predictor")]["gap"] > gaps[(structure, "rca")]["gap"] > 0.03
        assert gaps[(structure, "rca")]["gap_low"] > 0
        assert gaps[(structure, "rca")]["worst"] == "Black"
    assert result["findings"][0]["title"] == "Ethnic group Black at risk: kidney, liver, spleen"
    # the adjusted model blames ethnic group, not sex or BMI
    significant = {
        t["variable"]
        for m in result["regression"]
        for t in m["terms"]
        if t["p_holm"] is not None and t["p_holm"] < 0.05
    }
    assert significant == {"ethnic_group"}
    json.dumps(result, allow_nan=False)  # strict JSON


def test_no_disparity_alert_on_a_null_frame(null_frame: pd.DataFrame) -> None:
    result = compute_audit(null_frame, settings=SETTINGS)
    assert [a for a in result["alerts"] if a["kind"] == "disparity"] == []
    assert result["findings"][0]["title"] == "No group found at risk"
    assert all(d["gap"] < SETTINGS.gap_alert for d in result["disparities"])


def test_disparity_formulas(null_frame: pd.DataFrame) -> None:
    result = compute_audit(null_frame, settings=SETTINGS)
    d = next(
        x for x in result["disparities"] if (x["attribute"], x["structure"], x["estimator"]) == ("sex", "liver", "rca")
    )
    means = {
        r["group"]: r["rca"]["mean"] for r in result["metrics"] if (r["attribute"], r["structure"]) == ("sex", "liver")
    }
    values = np.array(list(means.values()))
    overall = next(o["rca"] for o in result["overall"] if o["structure"] == "liver")
    assert d["gap"] == pytest.approx(values.max() - values.min())
    assert d["ratio"] == pytest.approx(values.min() / values.max())
    assert d["ser"] == pytest.approx((1 - values).max() / (1 - values).min())
    assert d["es_dice"] == pytest.approx(overall / (1 + values.std(ddof=0)))
    assert d["test"] == "Mann-Whitney U"
    sub = null_frame[null_frame["structure"] == "liver"]
    assert means["F"] == pytest.approx(sub.loc[sub["sex"] == "F", "rca_dice"].mean())
    age = next(x for x in result["disparities"] if (x["attribute"], x["estimator"]) == ("age_band", "rca"))
    assert age["test"] == "Kruskal-Wallis"
    record = next(r for r in result["metrics"] if (r["attribute"], r["group"], r["structure"]) == ("sex", "F", "liver"))
    assert record["rca"]["low"] < record["rca"]["mean"] < record["rca"]["high"]
    assert record["truth"]["patients"] >= SETTINGS.min_cell
    assert record["validity"]["predictor"]["r"] > 0.5
    assert 0.0 < record["validity"]["predictor"]["mae"] < 0.05


def test_trend_alerts_when_a_group_gets_worse() -> None:
    before = compute_audit(synthetic_frame(400, seed=21), settings=SETTINGS, label="2026Q2")
    now = compute_audit(
        synthetic_frame(400, seed=22, effects={("sex", "F"): -0.06}),
        settings=SETTINGS,
        previous=[before],
        label="2026Q3",
    )
    kinds = {(a["kind"], a["attribute"], a["group"]) for a in now["alerts"]}
    assert ("trend-drop", "sex", "F") in kinds
    assert ("trend-gap", "sex", None) in kinds
    assert ("trend-drop", "sex", "M") not in kinds
    assert now["trend"]["periods"] == ["2026Q2", "2026Q3"]
    series = next(
        s
        for s in now["trend"]["means"]
        if (s["attribute"], s["group"], s["structure"], s["estimator"]) == ("sex", "F", "liver", "rca")
    )
    assert series["values"][0] > series["values"][1]


def test_clear_errors(null_frame: pd.DataFrame) -> None:
    with pytest.raises(AuditError, match="empty"):
        compute_audit(null_frame.iloc[:0], settings=SETTINGS)
    few = null_frame[null_frame["pseudonym"].isin(sorted(null_frame["pseudonym"].unique())[:5])]
    with pytest.raises(AuditError, match=r"only 5 patients.*at least 20"):
        compute_audit(few, settings=SETTINGS)
    with pytest.raises(AuditError, match=r"lacks the columns.*'sex'"):
        compute_audit(null_frame.drop(columns=["sex"]), settings=SETTINGS)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="min_cell"):
        AuditSettings(min_cell=0)


def test_sparse_registry_still_audits(null_frame: pd.DataFrame) -> None:
    """No RCA bank, no spatial summary, no correction, one site, ethnic group never recorded."""
    sparse = null_frame.assign(
        rca_dice=np.nan, true_dice=np.nan, true_nsd=np.nan, true_hd95_mm=np.nan, site="North", ethnic_group=None
    )
    sparse.loc[:, [c for c in sparse.columns if c.startswith("region_")]] = np.nan
    result = compute_audit(sparse, settings=SETTINGS)
    assert {d["estimator"] for d in result["disparities"]} == {"predictor"}
    assert all(r["rca"] is None and r["truth"] is None and r["regions"] == {} for r in result["metrics"])
    assert {m["method"] for m in result["regression"]} == {"OLS (one site)"}
    assert result["counts"]["ethnic_group"]["missing_rate"] == 1.0
    titles = [f["title"] for f in result["findings"]]
    assert "Demographics often missing" in titles and "Estimates not checked against corrections" in titles
    from fairness_registry.audit.plots import report_figures

    figures = report_figures(result, sparse)
    assert figures["spatial"] == [] and len(figures["forest"]) == 4  # no ethnic group, and site is one group
    json.dumps(result, allow_nan=False)
