"""RCA calibrated per structure: removes a structure's low bias, keeps the order, says raw or calibrated."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from quality import gate
from quality.predictor import FEATURES, CalibrationRow
from quality.rca_calibration import RcaCalibration
from quality.types import StructureRca


def _rows(n: int = 60, seed: int = 1) -> list[CalibrationRow]:
    """'thin' reads 0.25 low (registration caps it), 'big' reads true; a few RCA values are missing."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        for name, label, bias in (("big", 1, 0.0), ("thin", 2, 0.25)):
            true = float(rng.uniform(0.3, 0.98))
            raw = float(np.clip(true - bias + rng.normal(0, 0.02), 0, 1)) if i != 7 else math.nan
            features = dict.fromkeys(FEATURES, 0.0) | {"rca_max_dice": raw}
            rows.append(
                CalibrationRow(f"s{i}", label, name, "fit" if i % 5 not in (1, 3) else "conformal", true, features)
            )
    return rows


@pytest.mark.parametrize("method", ["isotonic", "linear"])
def test_calibration_removes_the_bias_of_each_structure(method: str) -> None:
    rows = _rows()
    cal = RcaCalibration.fit(rows, method, split="fit")  # type: ignore[arg-type]
    held = [r for r in rows if r.split == "conformal" and math.isfinite(r.features["rca_max_dice"])]
    for name in ("big", "thin"):
        sel = [r for r in held if r.name == name]
        raw_mae = np.mean([abs(r.features["rca_max_dice"] - r.true_dice) for r in sel])
        estimate = [cal.apply(name, r.features["rca_max_dice"]) for r in sel]
        values = [r.features["rca_max_dice"] if e is None else e for r, e in zip(sel, estimate, strict=True)]
        cal_mae = np.mean([abs(v - r.true_dice) for v, r in zip(values, sel, strict=True)])
        assert cal_mae < 0.05
        if name == "thin":
            assert raw_mae > 0.2
    assert cal.n_by_structure["thin"] == 35  # 36 fit subjects, one without RCA
    # 'big' reads true already: a map is kept only where it lowers the error on the other split
    if "big" not in cal.n_by_structure:
        assert cal.apply("big", 0.5) is None
    x = np.linspace(0, 1, 21)
    mapped = [cal.apply("thin", float(v)) for v in x]
    assert all(a is not None and b is not None and a <= b + 1e-12 for a, b in itertools.pairwise(mapped))
    assert all(0 <= (v or 0) <= 1 for v in mapped)
    assert cal.apply("thin", math.nan) is None and cal.apply("unknown", 0.5) is None


def test_a_map_that_does_not_help_is_dropped() -> None:
    rows = _rows()
    # 'thin' on the check split now reads true: the map fitted on the biased fit split would make it worse
    rows = [
        r
        if r.split == "fit" or r.name != "thin"
        else CalibrationRow(
            r.subject, r.label, r.name, r.split, r.true_dice, r.features | {"rca_max_dice": r.true_dice}
        )
        for r in rows
    ]
    assert "thin" not in RcaCalibration.fit(rows, "isotonic").n_by_structure
    assert "thin" in RcaCalibration.fit(rows, "isotonic", check_split=None).n_by_structure


def test_few_rows_stay_raw_and_the_gate_says_which() -> None:
    cal = RcaCalibration.fit(_rows(n=8), "isotonic", split="fit")
    assert cal.n_by_structure == {}
    raw = StructureRca(1, "big", max_dice=0.5, mean_dice=0.4, hd95_mm=3.0)
    assert cal.calibrate(raw) == raw and not raw.calibrated and raw.dice == 0.5
    limits = gate.GateLimits(predicted_low_min=0.0, rca_min=0.6, structures={"thin": (0.0, 0.8)})
    assert gate.estimate_reasons("big", raw, None, limits) == ["big: RCA estimate 0.50 (raw) under 0.60"]
    calibrated = StructureRca(2, "thin", max_dice=0.5, mean_dice=0.4, hd95_mm=3.0, calibrated_dice=0.75)
    assert calibrated.dice == 0.75
    assert gate.estimate_reasons("thin", calibrated, None, limits) == [
        "thin: calibrated RCA estimate 0.75 (raw 0.50) under 0.80"
    ]
    shifted = gate.GateLimits(predicted_low_min=0.0, rca_min=0.6, structures={"thin": (0.0, 0.8)}, shift=-0.1)
    assert gate.estimate_reasons("thin", calibrated, None, shifted) == []
    with pytest.raises(ValueError, match="not known"):
        RcaCalibration.fit(_rows(n=8), "spline")  # type: ignore[arg-type]
