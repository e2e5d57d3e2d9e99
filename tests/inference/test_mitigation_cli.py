"""``fairnode model train --mitigation`` and ``fairnode model compare``: bad input, a tiny group-specific
training end to end, and the comparison's figures and winning rule on known per-case scores."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cohorts.subjects import draw_subject
from fairnode.cli import app
from fairnode.mitigation.compare import MAX_OVERALL_DROP, compare
from fairnode.mitigation.measure import CaseScores, _demographics, balanced_subjects, candidate_from_folder
from fairnode.mitigation.report import grouped_bar_plot, markdown_table
from inference.model_card import load_card

TINY = ["--iterations", "2", "--n-train", "10", "--grid-factor", "8", "--no-validate", "--workers", "1"]


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mitigation", "fair"], "unknown mitigation 'fair'; choose one of: none, balanced"),
        (["--mitigation", "balanced", "--group", "height"], "unknown group attribute 'height'"),
        (["--cohort-shift", "nowhere"], "cohort shift 'nowhere' is neither a shipped scenario"),
    ],
)
def test_bad_training_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    code, out = _run("model", "train", "xr-knee-x", *args, "--out", str(tmp_path))
    assert code == 2
    assert message in " ".join(out.split())
    assert "Traceback" not in out


def test_an_empty_group_is_one_line(tmp_path: Path) -> None:
    code, out = _run(
        "model", "train", "xr-knee-x", "--mitigation", "balanced", "--group", "ethnic_group",
        "--cohort-shift", "under-represented-minorities", *TINY, "--n-train", "3",
        "--out", str(tmp_path / "m"), "--work", str(tmp_path / "w"),
    )  # fmt: skip
    assert code == 2, out
    assert "has no subject in the training cohort of 3" in " ".join(out.split())


def test_group_specific_training_writes_a_model_per_group_and_a_fallback(tmp_path: Path) -> None:
    shift = tmp_path / "half.yaml"
    shift.write_text("name: half\ngroups:\n  - {match: {sex: F}, share: 0.5}\n  - {match: {sex: M}, share: 0.5}\n")
    code, out = _run(
        "model", "train", "xr-knee-gs", "--mitigation", "group-specific", "--group", "sex",
        "--cohort-shift", str(shift), *TINY, "--n-train", "5",
        "--out", str(tmp_path / "m"), "--work", str(tmp_path / "w"),
    )  # fmt: skip
    assert code == 0, out
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["xr-knee-gs", "xr-knee-gs-f", "xr-knee-gs-m"]
    fallback = load_card(tmp_path / "m" / "xr-knee-gs")
    women = load_card(tmp_path / "m" / "xr-knee-gs-f")
    assert fallback.mitigation is not None and women.mitigation is not None
    assert fallback.mitigation.group is None and women.mitigation.group == "F"
    assert set(women.mitigation.training_groups) == {"F"}
    assert sum(fallback.mitigation.training_groups.values()) == 5
    assert "--mitigation group-specific" in fallback.reproduce[-1]
    candidate = candidate_from_folder(tmp_path / "m" / "xr-knee-gs")
    f, m = (next(s for s in balanced_subjects("xr-knee", ["sex"], 2) if s.sex == sex) for sex in ("F", "M"))
    assert candidate.route(f)[1].name == "xr-knee-gs-f"
    assert candidate.route(m)[1].name == "xr-knee-gs-m"
    # a second run reuses the cached images and weights
    code, out = _run(
        "model", "train", "xr-knee-gs", "--mitigation", "group-specific", "--group", "sex",
        "--cohort-shift", str(shift), *TINY, "--n-train", "5",
        "--out", str(tmp_path / "m"), "--work", str(tmp_path / "w"),
    )  # fmt: skip
    assert code == 0 and "training 2 iterations" not in out
    # the comparison from cached per-case scores (no images are generated for cached cases)
    subjects = balanced_subjects("xr-knee", ["sex"], 2)
    rows = [
        CaseScores("xr-knee-gs", f"xr-knee-{x.seed}-{x.index}", x.index, x.sex, "xr-knee-gs-" + x.sex.lower(),
                   _demographics(x), {"femur": {"dice": 0.9 if x.sex == "M" else 0.8, "nsd": 0.9, "hd95_mm": 2.0}})
        for x in subjects
    ]  # fmt: skip
    cache = tmp_path / "w" / "compare-xr-knee-sex-2.jsonl"
    cache.write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in rows))
    code, out = _run(
        "model", "compare", "xr-knee-gs", "--per-group", "2", "--models-dir", str(tmp_path / "m"),
        "--work", str(tmp_path / "w"), "--json", str(tmp_path / "c.json"), "--bootstrap", "100",
    )  # fmt: skip
    assert code == 0, out
    assert "winner: xr-knee-gs (group-specific)" in out
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["table"][0]["gap"] == pytest.approx(0.1, abs=1e-6)
    assert result["majority"] in ("F", "M")


def _cases(name: str, dice: dict[str, float], n: int = 12) -> list[CaseScores]:
    rng = np.random.default_rng(len(name))
    out = []
    for i in range(n):
        s = draw_subject("xr-knee", i, 7000)
        sex = "F" if i % 2 else "M"
        d = float(np.clip(dice[sex] + rng.normal(0, 0.01), 0, 1))
        demo = _demographics(s) | {"sex": sex}
        structures: dict[str, dict[str, float | None]] = {
            "femur": {"dice": d, "nsd": d, "hd95_mm": 2.0},
            "tibia": {"dice": d, "nsd": d, "hd95_mm": 3.0},
        }
        out.append(CaseScores(name, f"c{i}", i, sex, name, demo, structures))
    return out


def test_compare_applies_the_audit_definitions_and_the_winning_rule(tmp_path: Path) -> None:
    cases = (
        _cases("base", {"F": 0.80, "M": 0.90})
        + _cases("fair", {"F": 0.88, "M": 0.89})  # overall +0.035: eligible, best worst group
        + _cases("fairest", {"F": 0.95, "M": 0.70})  # worst group M 0.70
        + _cases("costly", {"F": 0.89, "M": 0.60})  # overall drops by > 0.01: not eligible
    )
    strategies = {"base": "none", "fair": "balanced", "fairest": "reweighted", "costly": "group-dro"}
    result = compare(cases, strategies, ["sex"], baseline="base", majority="M", bootstrap=200)
    rows = {r["model"]: r for r in result["table"]}
    base = rows["base"]
    assert base["gap"] == pytest.approx(base["groups"]["M"] - base["groups"]["F"], abs=1e-3)
    assert base["ser"] == pytest.approx((1 - base["groups"]["F"]) / (1 - base["groups"]["M"]), abs=0.02)
    sd = np.std([base["groups"]["F"], base["groups"]["M"]])
    assert base["es_dice"] == pytest.approx(base["dice"] / (1 + sd), abs=1e-3)
    assert base["dice_ci"][0] < base["dice"] < base["dice_ci"][1]
    assert base["worst_group"] == "F"
    assert rows["fair"]["majority_change"] == pytest.approx(-0.01, abs=0.01)
    assert rows["costly"]["overall_change"] < -MAX_OVERALL_DROP
    assert "costly" not in result["eligible"]
    assert result["winner"] == {"model": "fair", "strategy": "balanced"}
    assert result["per_structure"]["fair"]["femur"]["hd95_mm"] == pytest.approx(2.0)
    assert "| **balanced** |" in markdown_table(result)
    assert grouped_bar_plot(result, tmp_path / "bars.png").stat().st_size > 5000
    json.dumps(result)


def test_compare_cli_refuses_bad_input(tmp_path: Path) -> None:
    code, out = _run("model", "compare", "nothing-here", "--models-dir", str(tmp_path))
    assert code == 2 and "no model 'nothing-here'" in out
    code, out = _run("model", "compare", "xr-knee", "--per-group", "1")
    assert code == 2 and "--per-group must be >= 2" in out
