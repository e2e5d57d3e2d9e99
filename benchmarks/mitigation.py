"""Bias mitigation experiment: every strategy trained on the same imbalanced knee cohort, compared on one
balanced held-out cohort, the winner shipped and audited on a deployment cohort before and after.

Stages (each cached under ``--work``, so a rerun only does what is missing):

1. ``train``: for each scenario, one model per strategy (``group-specific``: one per group + the fallback)
   on a smaller grid than the bundled knee model (2 mm, 128 x 128 patches: about 4x cheaper, same network);
2. ``compare``: :func:`fairnode.mitigation.compare.compare_models` on the balanced held-out cohort;
3. ``ship``: the winner of the first scenario copied to ``inference/models/xr-knee-<strategy>/``;
   its RCA bank and calibration come from ``fairnode quality calibrate`` (run separately);
4. ``audit``: a deployment cohort audited (estimates only) with the baseline and with the winner.

Run::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/mitigation.py --stage train
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cohorts.shift import load_shift, shipped_scenarios
from fairnode.bias_discovery.evaluate import evaluate
from fairnode.bias_discovery.run import DEPLOY_SEED, QUALITY_FILES, audit_frame, run_cohort
from fairnode.bias_discovery.scenarios import SEX_BALANCED, Scenario
from fairnode.mitigation.compare import compare
from fairnode.mitigation.measure import COMPARE_SEED, CaseScores, balanced_subjects, candidate_from_folder, measure
from fairnode.mitigation.report import grouped_bar_plot, markdown_table
from inference.mitigation import STRATEGIES, model_name_for_group
from inference.mitigation_training import coarser_grid, mitigation_recipe, train_mitigated
from inference.model_card import MODELS_DIR, CohortSpec, ValidationSpec, load_card, save_card
from inference.training import RECIPES, Recipe, TrainingProgress

logger = logging.getLogger("benchmarks.mitigation")

RESULTS = Path(__file__).parent / "results"
#: (scenario, group attribute, batch size): the batch holds every group for stratified batches
SCENARIOS: dict[str, tuple[str, int]] = {
    "under-represented-women": ("sex", 4),
    "under-represented-minorities": ("ethnic_group", 5),
}
ITERATIONS = 900
N_TRAIN = 160


def experiment_recipe(iterations: int = ITERATIONS, n_train: int = N_TRAIN, batch_size: int = 4) -> Recipe:
    """The bundled knee recipe on a 2 mm grid with 128 x 128 patches (about 4x cheaper per iteration)."""
    base = coarser_grid(RECIPES["xr-knee"], 2)
    return dataclasses.replace(base, iterations=iterations, n_train=n_train, batch_size=batch_size)


def model_name(scenario: str, strategy: str) -> str:
    short = {"under-represented-women": "uw", "under-represented-minorities": "um"}[scenario]
    return f"xr-knee-{short}-{strategy}"


class _LogProgress(TrainingProgress):
    def __init__(self) -> None:
        self.name = ""
        self.total = 0
        self.done = 0
        self.t0 = time.perf_counter()

    def stage(self, name: str, total: int) -> None:
        self.name, self.total, self.done, self.t0 = name, total, 0, time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)

    def advance(self, info: str = "") -> None:
        self.done += 1
        if self.done % 100 == 0 or self.done == self.total:
            rate = (time.perf_counter() - self.t0) / self.done
            print(f"  {self.done}/{self.total} {info} ({rate:.2f} s/step)", flush=True)


def stage_train(work: Path, scenarios: list[str], strategies: list[str], iterations: int) -> dict[str, object]:
    timings: dict[str, object] = {}
    for scenario in scenarios:
        attribute, batch = SCENARIOS[scenario]
        shift = load_shift(shipped_scenarios()[scenario])
        for strategy in strategies:
            name = model_name(scenario, strategy)
            base = experiment_recipe(iterations, batch_size=batch)
            recipe = mitigation_recipe(base, name, strategy, attribute, shift)
            t0 = time.perf_counter()
            folders = train_mitigated(recipe, work / "models", work / "cache", workers=1, progress=_LogProgress())
            timings[name] = {"models": sorted(folders), "wall_s": round(time.perf_counter() - t0, 1)}
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {sorted(folders)}", flush=True)
    return timings


def stage_compare(work: Path, scenario: str, strategies: list[str], per_group: int) -> dict[str, Any]:
    """Every strategy of ``scenario`` on the balanced held-out cohort (``per_group`` per group)."""
    attribute, _ = SCENARIOS[scenario]
    folders = [work / "models" / model_name(scenario, s) for s in strategies]
    candidates = [candidate_from_folder(f) for f in folders]
    subjects = balanced_subjects("xr-knee", (attribute,), per_group)
    cache = work / f"compare-xr-knee-{attribute}-{per_group}.jsonl"  # the cache `fairnode model compare` reads
    t0 = time.perf_counter()
    cases = measure(candidates, subjects, (attribute,), cache, lambda case: None)
    baseline = model_name(scenario, "none")
    mit = load_card(work / "models" / baseline).mitigation
    majority = max(mit.training_groups, key=mit.training_groups.__getitem__) if mit else None
    result = compare(
        cases, {c.name: c.strategy for c in candidates}, (attribute,), baseline=baseline, majority=majority
    )
    result["cohort"] = {"kind": "xr-knee", "per_group": per_group, "n": len(subjects), "seed": COMPARE_SEED}
    result["markdown"] = markdown_table(result)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    grouped_bar_plot(result, RESULTS / f"mitigation-{scenario}.png")
    print(result["markdown"], flush=True)
    print(f"winner: {result['winner']}", flush=True)
    return result


def _validation(result: dict[str, Any], cases: list[CaseScores], attribute: str) -> ValidationSpec:
    """The card's validation: the winner's Dice on the balanced held-out cohort, overall and per group."""
    labels = list(cases[0].structures)

    def means(rows: list[CaseScores]) -> dict[str, float]:
        return {k: round(float(np.nanmean([r.structures[k]["dice"] or np.nan for r in rows])), 4) for k in labels}

    by_group: dict[str, dict[str, dict[str, float]]] = {}
    n_by_group: dict[str, dict[str, int]] = {}
    for attr in ("sex", "age_band", "ethnic_group", "bmi_band"):
        groups: dict[str, list[CaseScores]] = {}
        for c in cases:
            groups.setdefault(str(c.demographics[attr]), []).append(c)
        by_group[attr] = {g: means(rows) for g, rows in sorted(groups.items())}
        n_by_group[attr] = {g: len(rows) for g, rows in sorted(groups.items())}
    return ValidationSpec(
        cohort=CohortSpec(kind="xr-knee", n=len(cases), seed=result["cohort"]["seed"], shift=f"balanced-{attribute}"),
        composition=n_by_group,
        dice=means(cases),
        dice_by_group=by_group,
        n_by_group=n_by_group,
    )


def stage_ship(work: Path, scenario: str, result: dict[str, Any]) -> list[str]:
    """Copy the winner (with its group models) to ``inference/models/xr-knee-<strategy>/``; card updated."""
    attribute, _ = SCENARIOS[scenario]
    winner = result["winner"]["model"]
    cache = work / f"compare-xr-knee-{attribute}-{result['cohort']['per_group']}.jsonl"
    cases = [CaseScores(**json.loads(line)) for line in cache.read_text(encoding="utf-8").splitlines() if line.strip()]
    cases = [c for c in cases if c.candidate == winner]
    strategy = result["winner"]["strategy"]
    shipped_name = f"xr-knee-{strategy}"
    src = candidate_from_folder(work / "models" / winner)
    shipped: list[str] = []
    for group, folder in src.models.items():
        name = shipped_name if group is None else model_name_for_group(shipped_name, group)
        dest = MODELS_DIR / name
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("model.onnx", "model_mc.onnx", "weights.pt"):
            shutil.copyfile(folder / f, dest / f)
        card = load_card(folder)
        mit = card.mitigation
        if mit is None:
            raise ValueError(f"{folder} has no mitigation section")
        note = (
            f"Chosen by `fairnode model compare` on a balanced held-out cohort ({result['cohort']['n']} subjects, "
            f"{result['cohort']['per_group']} per {attribute} group): {result['rule']}. Trained on a 2 mm grid with "
            f"128 x 128 patches (about 4x cheaper than the bundled 1 mm model) for {card.training.iterations} "
            "iterations."
        )
        card = card.model_copy(
            update={
                "name": name,
                "description": card.description.replace(winner, name),
                "mitigation": mit.model_copy(
                    update={"comparison": result["table"], "note": (mit.note + " " + note).strip()}
                ),
                "validation": _validation(result, cases, attribute),
                "reproduce": (
                    "make install",
                    f".venv/bin/fairnode model train {shipped_name} --mitigation {strategy} --group {attribute} "
                    f"--cohort-shift {scenario} --grid-factor 2 --iterations {card.training.iterations} "
                    f"--n-train {N_TRAIN} --no-validate",
                    "OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/mitigation.py "
                    "--stage train --stage compare --stage ship",
                    f".venv/bin/fairnode quality calibrate --model {name} --n 60 --n-bank 20",
                ),
            }
        )
        save_card(card, dest)
        shipped.append(name)
    return shipped


def _with_bundled_quality(folder: Path) -> Path:
    """``folder`` with the bundled knee model's RCA bank and calibration when it has none of its own."""
    if load_card(folder).quality is not None:
        return folder
    bundled = MODELS_DIR / "xr-knee"
    for f in QUALITY_FILES:
        shutil.copyfile(bundled / f, folder / f)
    quality = load_card(bundled).quality
    if quality is None:
        raise ValueError("the bundled xr-knee model has no quality section to lend")
    save_card(load_card(folder).model_copy(update={"quality": quality.model_copy(update={"validation": None})}), folder)
    return folder


def stage_audit(work: Path, scenario: str, shipped: str, n: int) -> dict[str, Any]:
    """The audit (estimates only) of a sex-balanced deployment cohort with the baseline and with the winner."""
    deploy = Scenario(
        name=f"deploy-{scenario}",
        kind="xr-knee",
        family="under-representation",
        description="sex-balanced deployment cohort",
        attribute="sex",
        group="F",
        reference=("M",),
        deploy=SEX_BALANCED,
    )
    out: dict[str, Any] = {"n": n, "seed": DEPLOY_SEED}
    for label, folder in (
        ("before", _with_bundled_quality(work / "models" / model_name(scenario, "none"))),
        ("after", MODELS_DIR / shipped),
    ):
        t0 = time.perf_counter()
        cases = run_cohort(deploy, folder, n, work / f"deploy-{scenario}-{folder.name}.jsonl")
        card = load_card(folder)
        frame = audit_frame(cases, card.name, card.version, with_truth=True)
        r = evaluate(deploy, frame, card.name)
        out[label] = {
            "model": card.name,
            "quality_from": "bundled xr-knee (not recalibrated)" if label == "before" else "its own calibration",
            "true_gap": r.true_gap,
            "true_gap_ci": list(r.true_gap_ci),
            "rca_gap": r.rca_gap,
            "predictor_gap": r.predictor_gap,
            "true_mean": r.true_mean,
            "alerts_on_sex": len(r.alerts_on_attribute()),
            "alerts": len([a for a in r.alerts if a.get("kind") == "disparity"]),
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        print(f"{label}: {out[label]}", flush=True)
    b, a = out["before"], out["after"]
    out["true_gap_shrinks"] = abs(a["true_gap"]) < abs(b["true_gap"])
    for est in ("rca", "predictor"):
        out[f"{est}_gap_shrinks"] = abs(a[f"{est}_gap"]) < abs(b[f"{est}_gap"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("train", "compare", "ship", "audit"), action="append", required=True)
    parser.add_argument("--work", type=Path, default=Path("data/mitigation"))
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--strategy", action="append", choices=STRATEGIES)
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--per-group", type=int, default=40)
    parser.add_argument("--n-deploy", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scenarios = args.scenario or ["under-represented-women"]
    strategies = args.strategy or list(STRATEGIES)
    out_path = RESULTS / "mitigation.json"
    results: dict[str, object] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if "train" in args.stage:
        training: dict[str, object] = results.get("training", {})  # type: ignore[assignment]
        results["training"] = training | stage_train(args.work, scenarios, strategies, args.iterations)
        results["settings"] = {
            "iterations": args.iterations,
            "n_train": N_TRAIN,
            "grid": "2 mm, 128 x 128 patches",
            "threads": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS"),
        }
    scenario_results: dict[str, Any] = results.setdefault("scenarios", {})  # type: ignore[assignment]
    for scenario in scenarios:
        entry = scenario_results.setdefault(scenario, {})
        if "compare" in args.stage:
            entry["comparison"] = stage_compare(args.work, scenario, strategies, args.per_group)
        if "ship" in args.stage and scenario == scenarios[0]:
            entry["shipped"] = stage_ship(args.work, scenario, entry["comparison"])
        if "audit" in args.stage and scenario == scenarios[0]:
            entry["audit"] = stage_audit(args.work, scenario, entry["shipped"][0], args.n_deploy)
        _save(out_path, results)
    results["command"] = "OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/mitigation.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    _save(out_path, results)
    return 0


def _save(out_path: Path, results: dict[str, object]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
