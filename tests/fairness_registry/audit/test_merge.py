"""Multi-site audit: site exports merged into a group audit equal the audit of the pooled cases (means exactly,
CIs within the bootstrap's error), suppressed cells never reappear, and no case row leaves a site."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pytest

from fairness_registry.audit import AuditError, AuditSettings
from fairness_registry.audit.compute import compute_audit
from fairness_registry.audit.export import site_export
from fairness_registry.audit.merge import WALD_TEST, merge_exports
from fairness_registry.audit.settings import ESTIMATORS
from fairness_registry.audit.synthetic import synthetic_frame

SETTINGS = AuditSettings(bootstrap=400, seed=3)
#: An ethnic group shown at North (12 patients) and suppressed at South (4).
SPLIT_GROUP = "Other"
#: An ethnic group with 3 patients at each site: suppressed everywhere, 6 pooled.
HIDDEN_GROUP = "Pacific"


def _site(name: str, n: int, seed: int, split: int, effect: float) -> pd.DataFrame:
    frame = synthetic_frame(n, seed=seed, sites=(name,), effects={("sex", "F"): effect})
    frame["pseudonym"] = name[0] + frame["pseudonym"]
    frame["case_id"] = frame["case_id"] + (1_000_000 if name == "South" else 0)
    patients = sorted(frame["pseudonym"].unique())
    frame.loc[frame["pseudonym"].isin(patients[:split]), "ethnic_group"] = SPLIT_GROUP
    frame.loc[frame["pseudonym"].isin(patients[50:53]), "ethnic_group"] = HIDDEN_GROUP
    return frame


@pytest.fixture(scope="module")
def sites() -> dict[str, pd.DataFrame]:
    return {"North": _site("North", 260, 31, 12, -0.04), "South": _site("South", 200, 32, 4, -0.02)}


@pytest.fixture(scope="module")
def exports(sites: Mapping[str, pd.DataFrame]) -> list[dict[str, Any]]:
    meta = {"model": "ct-abdomen", "period": "2026Q3"}
    # through JSON, as the files travel between sites
    return [json.loads(json.dumps(site_export(f, settings=SETTINGS, site=s, meta=meta))) for s, f in sites.items()]


@pytest.fixture(scope="module")
def merged(exports: list[dict[str, Any]]) -> dict[str, Any]:
    return merge_exports(exports, label="2026Q3")


@pytest.fixture(scope="module")
def pooled(sites: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    return compute_audit(pd.concat(sites.values(), ignore_index=True), settings=SETTINGS, label="2026Q3")


def _by_key(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["attribute"], r["group"], r["structure"]): r for r in records}


def test_merged_group_estimates_equal_the_pooled_audit(merged: dict[str, Any], pooled: dict[str, Any]) -> None:
    ours, theirs = _by_key(merged["metrics"]), _by_key(pooled["metrics"])
    complete = [k for k, r in ours.items() if k in theirs and (len(r["sites"]) == 2 or k[0] == "site")]
    assert len(complete) >= 40  # every attribute and structure compared
    worst, truths = 0.0, 0
    for key in complete:
        a, b = ours[key], theirs[key]
        assert (a["patients"], a["cases"]) == (b["patients"], b["cases"]), key
        assert a["review_rate"] == pytest.approx(b["review_rate"], abs=1e-12)
        assert a["failure_rate"] == pytest.approx(b["failure_rate"], abs=1e-12)
        for estimator in ESTIMATORS:
            mine, ref = a[estimator], b[estimator]
            assert mine["mean"] == pytest.approx(ref["mean"], abs=1e-12), key
            se = (ref["high"] - ref["low"]) / 3.92  # the pooled bootstrap's standard error
            # the percentile CI of 400 resamples moves by ~0.15 se from run to run; allow the normal interval 0.5 se
            for bound in ("low", "high"):
                worst = max(worst, abs(mine[bound] - ref[bound]) / se)
                assert mine[bound] == pytest.approx(ref[bound], abs=0.5 * se), (key, estimator, bound)
        if a["truth"] and len(a["truth"]["sites"]) == 2:  # a site with < min_cell corrected patients hides them
            truths += 1
            for name in ("cases", "patients", "dice", "nsd", "hd95_mm"):
                assert a["truth"][name] == pytest.approx(b["truth"][name], abs=1e-9), (key, name)
            for estimator, v in b["validity"].items():
                assert a["validity"][estimator]["r"] == pytest.approx(v["r"], abs=1e-9)
                assert a["validity"][estimator]["mae"] == pytest.approx(v["mae"], abs=1e-12)
        assert a["regions"] == pytest.approx(b["regions"], abs=1e-12)
    assert worst > 0.0  # the CIs are computed differently, not copied
    assert truths >= 5
    for o, p in zip(merged["overall"], pooled["overall"], strict=True):
        assert (o["structure"], o["patients"], o["cases"]) == (p["structure"], p["patients"], p["cases"])
        assert all(o[e] == pytest.approx(p[e], abs=1e-12) for e in ESTIMATORS)


def test_merged_disparities_equal_the_pooled_audit(merged: dict[str, Any], pooled: dict[str, Any]) -> None:
    theirs = {(d["attribute"], d["structure"], d["estimator"]): d for d in pooled["disparities"]}
    sites = {(r["attribute"], r["group"], r["structure"]): len(r["sites"]) for r in merged["metrics"]}
    compared = 0
    for d in merged["disparities"]:
        ref = theirs.get((d["attribute"], d["structure"], d["estimator"]))
        complete = d["attribute"] == "site" or all(
            sites[(d["attribute"], g, d["structure"])] == 2 for g in d["compared"]
        )
        if ref is None or ref["compared"] != d["compared"] or not complete:
            continue
        compared += 1
        for name in ("gap", "ratio", "ser", "sd", "es_dice"):
            assert d[name] == pytest.approx(ref[name], abs=1e-12), name
        width = ref["gap_high"] - ref["gap_low"]
        assert d["gap_low"] == pytest.approx(ref["gap_low"], abs=0.25 * width)
        assert d["gap_high"] == pytest.approx(ref["gap_high"], abs=0.25 * width)
        assert d["test"] == WALD_TEST
    assert compared >= 12
    sex = [d for d in merged["disparities"] if d["attribute"] == "sex" and d["estimator"] == "predictor"]
    assert sex and all(d["worst"] == "F" and d["p_holm"] is not None and d["p_holm"] < 0.05 for d in sex)


def test_suppressed_cells_never_reappear(
    sites: Mapping[str, pd.DataFrame], exports: list[dict[str, Any]], merged: dict[str, Any]
) -> None:
    text = json.dumps(merged)
    assert HIDDEN_GROUP not in text and all(HIDDEN_GROUP not in json.dumps(e) for e in exports)
    south = next(e for e in exports if e["meta"]["site"] == "South")
    assert SPLIT_GROUP not in json.dumps(south)
    north_split = sites["North"].loc[sites["North"]["ethnic_group"] == SPLIT_GROUP, "pseudonym"].nunique()
    (cell,) = [c for c in merged["counts"]["ethnic_group"]["cells"] if c["group"] == SPLIT_GROUP]
    assert cell["patients"] == north_split  # South's 4 patients stay out
    split_records = [r for r in merged["metrics"] if r["group"] == SPLIT_GROUP]
    assert split_records and all(r["sites"] == ["North"] and r["patients"] == north_split for r in split_records)
    assert any("partial group: ethnic_group Other" in note for note in merged["notes"])
    for table in (*merged["counts"].values(), *merged["intersections"].values()):
        assert all(c["patients"] >= SETTINGS.min_cell for c in table["cells"])
    assert merged["counts"]["ethnic_group"]["suppressed"] >= 3  # Pacific at both, Other at South


def test_no_case_level_row_leaves_a_site(sites: Mapping[str, pd.DataFrame], exports: list[dict[str, Any]]) -> None:
    for export, frame in zip(exports, sites.values(), strict=True):
        text = json.dumps(export)
        assert not any(p in text for p in frame["pseudonym"].unique())
        numbers = [c["patients"] for t in export["counts"].values() for c in t["cells"]]
        assert min(numbers) >= SETTINGS.min_cell
        assert all(cell["patients"] >= SETTINGS.min_cell for cell in export["cells"])
        lists = [v for cell in export["cells"] for v in cell.values() if isinstance(v, list)]
        assert not lists  # sums and moments only, no per-case arrays


def test_exports_that_cannot_be_merged_are_refused(exports: list[dict[str, Any]]) -> None:
    with pytest.raises(AuditError, match="at least two"):
        merge_exports(exports[:1])
    with pytest.raises(AuditError, match="same site"):
        merge_exports([exports[0], exports[0]])
    other = {**exports[1], "settings": {**exports[1]["settings"], "min_cell": 5}}
    with pytest.raises(AuditError, match="different min_cell"):
        merge_exports([exports[0], other])
    with pytest.raises(AuditError, match="not a site audit export"):
        merge_exports([exports[0], {"kind": "something else"}])
