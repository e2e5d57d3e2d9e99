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
import sys
import time
from pathlib import Path

import torch

from cohorts.shift import load_shift, shipped_scenarios
from inference.mitigation import STRATEGIES
from inference.mitigation_training import coarser_grid, mitigation_recipe, train_mitigated
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("train", "compare", "ship", "audit"), action="append", required=True)
    parser.add_argument("--work", type=Path, default=Path("data/mitigation"))
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--strategy", action="append", choices=STRATEGIES)
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scenarios = args.scenario or ["under-represented-women"]
    strategies = args.strategy or list(STRATEGIES)
    out_path = RESULTS / "mitigation.json"
    results: dict[str, object] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if "train" in args.stage:
        results["training"] = stage_train(args.work, scenarios, strategies, args.iterations)
        results["settings"] = {
            "iterations": args.iterations,
            "n_train": N_TRAIN,
            "grid": "2 mm, 128 x 128 patches",
            "threads": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS"),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
