"""Bias discovery's bookkeeping, without running a model: case caches named by the quality files, a trained
model lent the bundled quality files (and recalibrated only when asked), the raw RCA gap and the summary."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from fairnode.bias_discovery.evaluate import ScenarioResult, summarise
from fairnode.bias_discovery.run import QUALITY_FILES, Schedule, _lend_quality, _recalibrated, cache_path
from fairnode.bias_discovery.scenarios import scenarios
from inference.model_card import load_card, save_card

KNEE = Path(__file__).resolve().parents[2] / "inference" / "models" / "xr-knee"


def _card_copy(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    shutil.copyfile(KNEE / "card.yaml", folder / "card.yaml")
    return folder


def test_cache_is_renamed_when_the_bank_or_the_calibration_changes(tmp_path: Path) -> None:
    folder = _card_copy(tmp_path, "m")
    first = cache_path(tmp_path, folder, "sex-balanced")
    assert first == cache_path(tmp_path, folder, "sex-balanced")
    assert first.parent == tmp_path / "cases" and first.name.startswith("m--sex-balanced--")
    card = load_card(folder)
    assert card.quality is not None and card.quality.rca is not None and card.quality.predictor is not None
    rebanked = card.quality.model_copy(update={"rca": card.quality.rca.model_copy(update={"sha256": "0" * 64})})
    save_card(card.model_copy(update={"quality": rebanked}), folder)
    second = cache_path(tmp_path, folder, "sex-balanced")
    assert second != first
    card = load_card(folder)
    assert card.quality is not None and card.quality.predictor is not None
    table = card.quality.predictor.model_copy(update={"sha256": "1" * 64})
    save_card(card.model_copy(update={"quality": card.quality.model_copy(update={"predictor": table})}), folder)
    assert cache_path(tmp_path, folder, "sex-balanced") not in (first, second)


def test_a_trained_model_with_a_stale_bank_gets_the_bundled_quality_files(tmp_path: Path) -> None:
    bundled = tmp_path / "xr-knee"
    bundled.mkdir()
    for f in ("card.yaml", *QUALITY_FILES):
        shutil.copyfile(KNEE / f, bundled / f)
    trained = _card_copy(tmp_path, "trained")
    card = load_card(trained)
    assert card.quality is not None and card.quality.rca is not None
    stale = card.quality.model_copy(update={"rca": card.quality.rca.model_copy(update={"sha256": "0" * 64})})
    save_card(card.model_copy(update={"quality": stale}), trained)

    _lend_quality(bundled, trained, keep_calibration=True)
    lent = load_card(trained).quality
    assert lent is not None and lent.rca is not None
    assert lent.rca.sha256 == load_card(bundled).quality.rca.sha256  # type: ignore[union-attr]
    assert all((trained / f).read_bytes() == (bundled / f).read_bytes() for f in QUALITY_FILES)
    assert lent.validation is None

    # nothing to recalibrate when no calibration cohort is asked for: the folder is left as it is
    before = (trained / "card.yaml").read_bytes()
    women = next(s for s in scenarios("xr-knee") if s.name == "train-women-0pct")
    assert _recalibrated(trained, women, Schedule(n_calibration=0), tmp_path, None) == trained
    assert (trained / "card.yaml").read_bytes() == before


def _result(name: str, true: float, rca: float, raw: float, predictor: float, bias: bool = True) -> ScenarioResult:
    return ScenarioResult(
        name=name,
        kind="xr-knee",
        family="acquisition-shift" if bias else "none",
        description="",
        attribute="sex",
        group="F",
        expect_bias=bias,
        n_group=20,
        n_reference=20,
        true_gap=true,
        true_gap_ci=(true - 0.01, true + 0.01),
        rca_gap=rca,
        predictor_gap=predictor,
        true_mean={"group": 0.9, "reference": 0.9 - true},
        rca_raw_gap=raw,
    )


def test_summary_reports_raw_and_calibrated_rca_and_the_predictor() -> None:
    results = [
        _result("balanced", 0.0, 0.001, -0.002, -0.004, bias=False),
        _result("a", -0.05, -0.04, -0.02, -0.06),
        _result("b", -0.10, -0.09, -0.05, -0.08),
        _result("c", -0.03, 0.01, -0.01, -0.03),
    ]
    s = summarise(results)
    assert s["rca"]["sign_agreement"] == "2/3" and s["rca_raw"]["sign_agreement"] == "3/3"
    assert s["predictor"]["sign_agreement"] == "3/3"
    assert s["rca_raw"]["slope_vs_true"] == pytest.approx(0.4, abs=0.1)  # raw RCA compresses the gaps
    assert s["predictor"]["pearson_r"] > s["rca"]["pearson_r"]
    assert s["unbiased_alerts"] == {"balanced": 0} and s["targets"]["no_alert_when_unbiased"]
    # an alert on an unbiased-by-design scenario that the truth confirms is a finding, not a false alarm
    results[0].alerts = [{"kind": "disparity", "attribute": "bmi_band", "confirmed": True}]
    s = summarise(results)
    assert s["unbiased_alerts"] == {"balanced": 1} and not s["targets"]["no_alert_when_unbiased"]
    assert s["unbiased_false_alerts"] == {"balanced": 0} and s["targets"]["no_false_alert_when_unbiased"]
    results[0].alerts[0]["confirmed"] = False
    assert not summarise(results)["targets"]["no_false_alert_when_unbiased"]
    results[0].alerts = []
    assert results[0].estimated_gap("rca_raw") == -0.002
    with pytest.raises(ValueError, match="not one of"):
        results[0].estimated_gap("truth")
    # a frame without the raw column: the raw RCA is left out of the summary, not reported as NaN
    no_raw = [_result(r.name, r.true_gap, r.rca_gap, math.nan, r.predictor_gap, r.expect_bias) for r in results]
    assert "rca_raw" not in summarise(no_raw) and "rca" in summarise(no_raw)


@pytest.mark.parametrize("kind", ["xr-knee", "ct-abdomen"])
def test_each_task_has_six_scenarios_of_every_family(kind: str) -> None:
    every = scenarios(kind)
    names = [s.name for s in every]
    assert len(names) == len(set(names)) >= 6
    assert {s.family for s in every} == {"none", "acquisition-shift", "under-representation"}
    assert any(not s.expect_bias and s.train is None for s in every)  # the control: the bundled model, no bias
    for s in every:
        if s.train is not None:
            assert s.family == "under-representation" or not s.expect_bias
