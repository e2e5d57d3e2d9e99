"""``fairnode quality calibrate --cohort`` and ``quality validate`` end to end on a tiny labelled cohort.

A copy of the bundled knee model; seven generated subjects as a cohort folder (two become the reference bank,
five the calibration cases); two stochastic samples. The numbers are meaningless at this size: the test
checks what is written where, that a rerun re-measures nothing, and that piped tables are whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import inference.model_card as model_card
from cohorts.make import CohortRequest, make_cohort
from cohorts.shift import load_shift, shipped_scenarios
from fairnode.cli import app
from inference.model_card import bundled_models, load_card

pytestmark = [pytest.mark.slow]

FILES = ("card.yaml", "model.onnx", "model_mc.onnx", "weights.pt")


@pytest.fixture(scope="module")
def knee(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("calibration")
    folder = root / "models" / "xr-knee"
    folder.mkdir(parents=True)
    for name in FILES:
        shutil.copy(bundled_models()["xr-knee"] / name, folder / name)
    cohort = root / "cohort"
    spec = load_shift(shipped_scenarios()["deployment-xr-knee"])
    make_cohort(CohortRequest(kind="xr-knee", n=7, seed=5901, spec=spec), cohort)
    return folder, cohort


def test_calibrate_from_a_cohort_then_validate(
    knee: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, cohort = knee
    # the copy stands for the bundled model: the commands must never write into the shipped one
    monkeypatch.setenv("FAIRNODE_MODELS_DIR", str(folder.parent))
    monkeypatch.setenv("FAIRNODE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(model_card, "bundled_models", lambda root=None: {"xr-knee": folder})
    work = tmp_path / "work"
    args = ["quality", "calibrate", "--model", "xr-knee", "--cohort", str(cohort), "--n-bank", "2"]
    args += ["--samples", "2", "--coverage", "0.8", "--work", str(work)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    card = load_card(folder)
    q = card.quality
    assert q is not None and q.rca is not None and q.predictor is not None and q.gate is not None
    assert q.rca.cohort.shift == "cohort cohort" and len(q.rca.composition["sex"]) >= 1
    assert q.rca.settings == {}  # the radiograph defaults
    assert q.rca.calibration is not None and q.rca.calibration.n_by_structure == {}  # too few rows: raw
    assert q.predictor.n_fit == 20 and q.predictor.n_conformal == 20  # every subject fits, out-of-fold interval
    assert q.predictor.regressor.startswith("sklearn ExtraTreesRegressor")
    assert set(q.gate.structures) == {"femur", "tibia", "fibula", "patella"}
    assert all(t.pooled and t.cases == 5 for t in q.gate.structures.values())  # every calibration case
    assert q.gate.review_budget is None and q.gate.budget_shift == 0.0 and q.gate.expected_prevalence == 0.15
    assert card.reproduce[-1].startswith(f"fairnode quality calibrate --model xr-knee --cohort {cohort}")
    assert "…" not in result.output and "patella" in result.output
    (cache,) = work.glob("calibration-xr-knee-cohort-*.jsonl")
    assert len(cache.read_text().splitlines()) == 5

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len(cache.read_text().splitlines()) == 5  # nothing measured again

    out = tmp_path / "v.json"
    validate = ["quality", "validate", "--cohort", str(cohort), "--model", "xr-knee", "--json", str(out)]
    result = CliRunner().invoke(app, [*validate, "--label", "tiny", "--samples", "2", "--work", str(work)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    overall = figures["overall"]
    assert overall["cases"] == 7 and overall["structures"] == 28
    for key in ("structure_review_rate", "structures_caught", "failing_cases", "prevalence", "rca_calibrated"):
        assert key in overall
    assert figures["risk_coverage"][0]["review_rate"] <= figures["risk_coverage"][-1]["review_rate"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "…" not in result.output and "structure" in result.output.lower()
    recorded = load_card(folder).quality
    assert recorded is not None and recorded.validation is not None
    assert recorded.validation["tiny"]["overall"]["cases"] == 7  # type: ignore[index]

    bad = CliRunner().invoke(app, ["quality", "calibrate", "--model", "xr-knee", "--cohort", str(tmp_path)])
    assert bad.exit_code != 0 and "not a cohort folder" in bad.output
    both = CliRunner().invoke(app, [*validate, "--shift", "deployment-xr-knee"])
    assert both.exit_code != 0 and "either --cohort" in both.output

    generated = ["quality", "validate", "--shift", "deployment-xr-knee", "--n", "1", "--seed", "5902"]
    gen_out = tmp_path / "g.json"
    result = CliRunner().invoke(
        app,
        [*generated, "--model", "xr-knee", "--json", str(gen_out), "--no-card", "--samples", "2", "--work", str(work)],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(gen_out.read_text())["cohort"] == {
        "kind": "xr-knee",
        "n": 1,
        "seed": 5902,
        "shift": "deployment-xr-knee",
    }
    assert set(load_card(folder).quality.validation or {}) == {"tiny"}  # type: ignore[union-attr]
