"""The Dice predictor (cross-conformal, normalised; the legacy split-conformal method), the routing gate and the
validation figures, on synthetic rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quality import gate
from quality.predictor import (
    FEATURES,
    LEGACY_REGRESSOR,
    REGRESSOR,
    CalibrationRow,
    DicePredictor,
    PredictorError,
    conformal_quantile,
    read_table,
    write_table,
)
from quality.types import DicePrediction, Route, SamplingMethod, StructureRca, StructureUncertainty
from quality.validation import ValidationRow, agreement, report

NAMES = ("liver", "spleen")


def _rows(n_subjects: int, seed: int) -> list[CalibrationRow]:
    """Rows whose true Dice is a noisy function of sample agreement and RCA, as real ones are."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_subjects):
        for label, name in enumerate(NAMES, start=1):
            quality = float(rng.uniform(0.3, 0.97))
            feats = {f: float(rng.normal()) for f in FEATURES}
            feats["sample_dice"] = quality + float(rng.normal(0, 0.03))
            feats["rca_max_dice"] = 0.9 * quality + float(rng.normal(0, 0.03))
            true = float(np.clip(quality + rng.normal(0, 0.02), 0, 1))
            rows.append(CalibrationRow(f"s{i}", label, name, "conformal" if i % 5 in (1, 3) else "fit", true, feats))
    return rows


def test_conformal_quantile_is_the_right_order_statistic() -> None:
    r = np.arange(1, 20, dtype=float)  # 19 residuals
    assert conformal_quantile(r, 0.9) == 18.0  # ceil(20 * 0.9) = 18th smallest
    with pytest.raises(PredictorError, match="too few"):
        conformal_quantile(np.ones(5), 0.9)


def test_predictor_tracks_dice_and_covers_new_structures() -> None:
    predictor = DicePredictor.fit(_rows(80, 0), NAMES, coverage=0.9)
    new = _rows(100, 1)
    preds = predictor.predict([r.features for r in new], [r.label for r in new])
    truth = np.array([r.true_dice for r in new])
    est = np.array([p.dice for p in preds])
    assert np.corrcoef(est, truth)[0, 1] > 0.9
    assert float(np.mean(np.abs(est - truth))) < 0.06
    covered = np.mean([p.low <= t <= p.high for p, t in zip(preds, truth, strict=True)])
    assert 0.85 <= covered <= 0.99
    assert all(0.0 <= p.low <= p.dice <= p.high <= 1.0 and p.name == NAMES[p.label - 1] for p in preds)


def test_predictor_table_round_trip_refits_the_same_model(tmp_path: Path) -> None:
    rows = _rows(30, 2)
    write_table(rows, tmp_path / "t.csv")
    back = read_table(tmp_path / "t.csv")
    assert [r.subject for r in back] == [r.subject for r in rows]
    fitted = DicePredictor.fit(rows, NAMES)
    a = fitted.predict([rows[0].features], [1])[0]
    loaded = DicePredictor.load(tmp_path / "t.csv", NAMES, 0.9, half_width=fitted.half_width)
    b = loaded.predict([rows[0].features], [1])[0]
    assert a.dice == pytest.approx(b.dice, abs=1e-5)
    (tmp_path / "bad.csv").write_text("subject,label\nx,1\n")
    with pytest.raises(PredictorError, match="lacks the columns"):
        read_table(tmp_path / "bad.csv")
    with pytest.raises(PredictorError, match="cannot read"):
        read_table(tmp_path / "missing.csv")


def test_interval_widens_where_the_regressor_is_unsure_and_the_card_reproduces_it(tmp_path: Path) -> None:
    rows = _rows(60, 3)
    predictor = DicePredictor.fit(rows, NAMES, coverage=0.9)
    assert predictor.description == REGRESSOR and not predictor.legacy
    assert set(predictor.out_of_fold) == {(r.subject, r.label) for r in rows}  # each subject held out once
    new = _rows(60, 4)
    preds = predictor.predict([r.features for r in new], [r.label for r in new])
    widths = np.array([p.high - p.low for p in preds])
    assert widths.std() > 0.1 * widths.mean()  # not one constant half-width
    truth = np.array([r.true_dice for r in new])
    covered = np.mean([p.low <= t <= p.high for p, t in zip(preds, truth, strict=True)])
    assert 0.8 <= covered <= 1.0
    write_table(rows, tmp_path / "t.csv")
    again = DicePredictor.load(tmp_path / "t.csv", NAMES, 0.9, regressor=REGRESSOR, half_width=predictor.half_width)
    assert again.out_of_fold == {}  # the folds were skipped: q came from the card
    assert again.predict([new[0].features], [1]) == predictor.predict([new[0].features], [1])


def test_a_card_of_the_legacy_method_loads_with_it(tmp_path: Path) -> None:
    rows = _rows(30, 5)
    write_table(rows, tmp_path / "t.csv")
    old = DicePredictor.load(tmp_path / "t.csv", NAMES, 0.9, regressor=LEGACY_REGRESSOR, half_width=0.123)
    assert old.legacy and old.description == LEGACY_REGRESSOR
    assert old.half_width != 0.123  # refitted as before: split-conformal on the conformal split
    (p,) = old.predict([rows[0].features], [1])
    assert p.high - p.low <= 2 * old.half_width + 1e-12
    with pytest.raises(PredictorError, match="one subject"):
        DicePredictor.fit([CalibrationRow("s0", 1, "liver", "fit", 0.9, r.features) for r in rows], NAMES)


def _unc(name: str, volume: float, label: int = 1) -> StructureUncertainty:
    return StructureUncertainty(label, name, volume, 0.1, 0.01, 0.95, 0.02)


LIMITS = gate.GateLimits(predicted_low_min=0.75, rca_min=0.6, volume_range={"liver": (800.0, 3000.0)}, modality="CT")


def test_gate_passes_a_good_case_and_gives_reasons_for_a_bad_one() -> None:
    good = gate.decide(
        structures=[_unc("liver", 1500.0)],
        rca={1: StructureRca(1, "liver", 0.85, 0.8, 4.0)},
        predictions={1: DicePrediction(1, "liver", 0.93, 0.88, 0.98, 0.9)},
        input_problems=[],
        limits=LIMITS,
        method=SamplingMethod.MC_DROPOUT,
        samples=6,
    )
    assert good.route == Route.PASS and good.reasons == ()
    bad = gate.decide(
        structures=[_unc("liver", 4000.0)],
        rca={1: StructureRca(1, "liver", 0.4, 0.3, 30.0)},
        predictions={1: DicePrediction(1, "liver", 0.7, 0.6, 0.8, 0.9)},
        input_problems=["input: modality MR, the model expects CT"],
        limits=LIMITS,
        method=SamplingMethod.MC_DROPOUT,
        samples=6,
    )
    assert bad.route == Route.REVIEW
    text = " | ".join(bad.reasons)
    assert "modality MR" in text and "implausible size 4000.0 ml" in text
    assert "lower bound under 0.75" in text and "RCA estimate 0.40 (raw) under 0.60" in text
    missing = gate.decide(
        structures=[_unc("liver", 0.0)],
        rca={},
        predictions={},
        input_problems=[],
        limits=LIMITS,
        method=SamplingMethod.TTA_FLIP,
        samples=4,
    )
    assert missing.route == Route.REVIEW and "liver: missing" in missing.reasons[0]
    uncalibrated = gate.decide(
        structures=[_unc("liver", 1500.0)],
        rca={},
        predictions={},
        input_problems=[],
        limits=None,
        method=SamplingMethod.MC_DROPOUT,
        samples=6,
    )
    assert uncalibrated.route == Route.REVIEW and "no quality calibration" in uncalibrated.reasons[0]


def test_gate_calibration_catches_the_target_with_the_fewest_reviews() -> None:
    rng = np.random.default_rng(0)
    n_cases = 200
    cases = np.repeat([f"c{i}" for i in range(n_cases)], 2)
    true = rng.uniform(0.5, 1.0, 2 * n_cases)
    low = true - 0.1 + rng.normal(0, 0.03, true.size)
    rca = np.full(true.size, 0.9)
    g = gate.calibrate(cases, true, low, rca, np.zeros(true.size, bool), target_catch=0.95)
    failing = true < 0.8
    flagged = low < g.predicted_low_min
    reviewed = {c for c, f in zip(cases, flagged, strict=True) if f}
    caught = np.mean([c in reviewed for c in cases[failing]])
    assert caught >= 0.95 and g.caught == pytest.approx(caught)
    assert g.review_rate == pytest.approx(len(reviewed) / n_cases)
    assert g.review_rate < 1.0


def test_validation_figures() -> None:
    truth = np.array([0.9, 0.8, 0.5, 0.95, 0.3])
    perfect = agreement(truth.copy(), truth)
    assert perfect["pearson"] == pytest.approx(1.0) and perfect["mae"] == pytest.approx(0.0)
    assert perfect["auroc_dice_below_0.7"] == pytest.approx(1.0)
    rows = [
        ValidationRow("a", "liver", 0.9, 0.85, 0.9, 0.8, 1.0, "PASS", {"sex": "F"}),
        ValidationRow("b", "liver", 0.5, 0.4, 0.55, 0.45, 0.65, "REVIEW", {"sex": "M"}),
        ValidationRow("b", "spleen", 0.95, 0.9, 0.7, 0.6, 0.8, "REVIEW", {"sex": "M"}),
    ]
    r = report(rows)
    overall = r["overall"]
    assert isinstance(overall, dict)
    assert overall["review_rate"] == pytest.approx(0.5)
    assert overall["failures_caught"] == pytest.approx(1.0)
    assert overall["coverage"] == pytest.approx(2 / 3, abs=1e-3)
    assert set(r["by_group"]["sex"]) == {"F", "M"}  # type: ignore[index]
