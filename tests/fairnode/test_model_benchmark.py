"""``fairnode model benchmark``: true metrics per group with CIs, the audit's disparities and regression, and where
errors fall, on a labelled cohort; written as JSON, HTML and PDF."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cohorts.make import CohortRequest, make_cohort
from fairness_registry.audit.settings import REGION_KEYS
from fairnode.benchmark.cohort import LabelledCase
from fairnode.benchmark.compute import compute_benchmark
from fairnode.benchmark.measure import CaseResult, measure_case
from fairnode.benchmark.settings import BenchmarkSettings
from inference.model_card import bundled_models, load_card

SETTINGS = BenchmarkSettings(min_cell=2, bootstrap=200)


def _case(i: int, sex: str, dice: float, rng: np.random.Generator) -> CaseResult:
    regions = {k: 0.5 for k in REGION_KEYS}
    structures = [
        {
            "name": name,
            "dice": float(np.clip(dice + rng.normal(0, 0.01), 0, 1)),
            "nsd": float(np.clip(dice - 0.05 + rng.normal(0, 0.01), 0, 1)),
            "hd95_mm": float(2.0 + rng.normal(0, 0.2)),
            "volume": float(1000 + rng.normal(0, 50)),
            "fp_size": 10.0,
            "fn_size": 12.0,
            "fp_regions": regions,
            "fn_regions": regions,
        }
        for name in ("femur", "tibia")
    ]
    demographics = {
        "sex": sex,
        "age_years": str(20 + (i * 7) % 60),
        "age_band": ("18-39", "40-59", "60-74")[i % 3],
        "bmi": str(20 + i % 10),
        "bmi_band": ("normal", "overweight")[i % 2],
        "ethnic_group": ("White", "Black")[(i // 2) % 2],
        "manufacturer": "Acme",
        "model_name": ("A1", "B2")[(i // 3) % 2],
    }
    return CaseResult(str(i), demographics, structures, 0.1)


def test_planted_sex_gap_is_found_by_the_audits_definitions() -> None:
    rng = np.random.default_rng(1)
    cases = [_case(i, "F" if i % 2 else "M", 0.90 if i % 2 else 0.95, rng) for i in range(40)]
    result = compute_benchmark(cases, settings=SETTINGS, model={"name": "m"}, cohort={"name": "c", "n": 40})
    sex = {r["group"]: r for r in result["groups"] if r["grouping"] == "sex" and r["structure"] == "femur"}
    assert sex["F"]["n"] == sex["M"]["n"] == 20
    for r in sex.values():
        assert r["dice"]["low"] <= r["dice"]["mean"] <= r["dice"]["high"]
    (gap,) = [
        d
        for d in result["disparities"]
        if d["metric"] == "dice" and d["attribute"] == "sex" and d["structure"] == "femur"
    ]
    means = [sex["F"]["dice"]["mean"], sex["M"]["dice"]["mean"]]
    assert gap["worst"] == "F" and gap["gap"] == pytest.approx(max(means) - min(means))
    assert gap["ser"] == pytest.approx((1 - min(means)) / (1 - max(means)))
    assert 0.04 < gap["gap"] < 0.06 and gap["gap_low"] > 0.03 and gap["p_holm"] < 0.001
    (model,) = [m for m in result["regression"] if m["metric"] == "dice" and m["structure"] == "femur"]
    (term,) = [t for t in model["terms"] if t["term"].startswith("sex ")]
    effect = term["estimate"] if term["term"] == "sex F vs M" else -term["estimate"]
    assert effect == pytest.approx(-0.05, abs=0.01) and term["p_holm"] < 0.001
    assert {t["variable"] for t in model["terms"]} >= {"sex", "age_years", "bmi", "scanner_model"}
    assert any(r["grouping"] == "sex x age_band" for r in result["groups"])  # intersections are reported


class _Shifted:
    """A 'segmenter' whose prediction is the truth moved 6 pixels towards the feet."""

    def __init__(self, truth: np.ndarray):
        self.card = load_card(bundled_models()["xr-knee"])
        self.truth = truth

    def segment(self, _pixels: np.ndarray, _spacing: tuple[float, ...]) -> np.ndarray:
        return np.roll(self.truth, 6, axis=0)


def test_errors_are_located_where_they_are() -> None:
    truth = np.zeros((120, 100), np.uint8)
    truth[40:80, 30:70] = 1  # a femur square
    case = LabelledCase({"sex": "F"}, np.zeros_like(truth, dtype=np.float32), (1.0, 1.0), truth, _header())
    result = measure_case(case, _Shifted(truth), SETTINGS, index="0")  # type: ignore[arg-type]
    femur = result.structures[0]
    assert femur["dice"] == pytest.approx(2 * 34 * 40 / 3200)
    assert femur["fp_regions"]["inferior"] == 1.0 and femur["fn_regions"]["superior"] == 1.0
    assert femur["fp_regions"]["boundary"] == pytest.approx(2 / 6, abs=0.01)  # 2 mm band of a 6 mm shift
    fp, fn = result.maps["fp"][0], result.maps["fn"][0]
    rows = np.arange(fp.shape[0])
    assert (rows * fp.sum(axis=1)).sum() / fp.sum() > (rows * fn.sum(axis=1)).sum() / fn.sum()


def _header() -> Any:
    import pydicom

    ds = pydicom.Dataset()
    ds.ImageLaterality = "R"
    return ds


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "cohort"
    make_cohort(CohortRequest(kind="xr-knee", n=8, seed=4545), out)
    return out


def test_cli_benchmark_writes_json_html_pdf_and_reuses_measured_cases(
    tmp_path: Path, cohort: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fairnode.cli import app

    env = {
        "FAIRNODE_DATA_DIR": str(tmp_path / "data"),
        "FAIRNODE_PSEUDONYM_SECRET": "k" * 40,
        "FAIRNODE_BENCHMARK__MIN_CELL": "2",
        "FAIRNODE_BENCHMARK__BOOTSTRAP": "200",
        "COLUMNS": "200",
    }
    runner = CliRunner()
    result = runner.invoke(app, ["model", "benchmark", "xr-knee", "--cohort", str(cohort)], env=env)
    assert result.exit_code == 0, result.output
    assert "femur" in result.output and "0.9" in result.output
    out = tmp_path / "data" / "benchmarks" / "xr-knee"
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.pdf").read_bytes()[:4] == b"%PDF"
    html = (out / "report.html").read_text()
    assert "Where the errors fall" in html and "Error maps by sex" in html and "Disparities" in html
    assert report["cohort"]["n"] == 8 and report["model"]["name"] == "xr-knee"
    femur = next(o for o in report["overall"] if o["structure"] == "femur")
    assert femur["dice"]["mean"] > 0.9 and femur["nsd"]["mean"] is not None
    for r in report["groups"]:
        shares = r["fp_regions"]
        if shares["superior"] is not None:
            assert shares["superior"] + shares["middle"] + shares["inferior"] == pytest.approx(1.0, abs=1e-3)
    assert not any("FNXRKNEE" in line for line in (out / "report.json").read_text().splitlines())
    cached = sorted((tmp_path / "data" / "benchmarks" / "cases").rglob("*.json"))
    assert len(cached) == 8
    from fairnode.benchmark import run

    def not_again(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a cached case was measured again")

    monkeypatch.setattr(run, "measure_case", not_again)
    _, again = run.measure_cohort(
        bundled_models()["xr-knee"], cohort, tmp_path / "data" / "benchmarks" / "cases", SETTINGS
    )
    assert [c.structures for c in again] == [
        json.loads(p.read_text())["structures"] for p in sorted(cached, key=lambda p: int(p.stem))
    ]


def test_benchmark_of_an_unknown_model_or_folder_is_one_line(tmp_path: Path) -> None:
    from fairnode.cli import app

    env = {"FAIRNODE_DATA_DIR": str(tmp_path / "data"), "FAIRNODE_PSEUDONYM_SECRET": "k" * 40, "COLUMNS": "200"}
    runner = CliRunner()
    result = runner.invoke(app, ["model", "benchmark", "nope", "--cohort", str(tmp_path)], env=env)
    assert result.exit_code == 2 and "model 'nope' is not installed" in result.output
    result = runner.invoke(app, ["model", "benchmark", "xr-knee", "--cohort", str(tmp_path)], env=env)
    assert result.exit_code == 2 and "has no manifest.csv" in result.output
