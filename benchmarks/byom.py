"""Bring your own model, measured: the MONAI-bundle round trip of the bundled knee model, and the bundled model
benchmarked next to an imported variant trained without women, on one labelled cohort.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/byom.py --work work/byom

Steps (each reused when its output exists, so a rerun is cheap):

1. the variant: ``xr-knee`` recipe, 60 training subjects of whom 0% women, 400 iterations (``inference.training``;
   ``--variant FOLDER`` takes a model already trained with that recipe, e.g. the bias-discovery benchmark's
   ``xr-knee-train-women-0pct-60n-400it``);
2. the labelled cohort: 48 balanced knee subjects, seed 7100 (``fairnode cohort make``);
3. round trip: ``xr-knee`` exported as a MONAI bundle, imported back (ONNX and torch backends); the largest
   |probability difference| and the share of identical labels over the cohort's images;
4. the variant exported as a bundle and imported (as a hospital would import a model from elsewhere);
5. ``fairnode model benchmark`` of both on the cohort; a table per sex and the sex gaps.

Writes ``benchmarks/results/byom.json`` and the two reports under ``<work>/reports``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cohorts.make import CohortRequest, make_cohort
from fairnode.benchmark.cohort import labelled_cases, read_labelled_case
from fairnode.benchmark.run import run_benchmark
from fairnode.benchmark.settings import BenchmarkSettings
from fairnode.bias_discovery.scenarios import women_share
from inference.bundle import export_bundle
from inference.model_card import CARD_FILE, bundled_models, load_card
from inference.model_import import import_model
from inference.model_store import open_segmenter
from inference.training import RECIPES, train_model

RESULTS = Path(__file__).resolve().parent / "results" / "byom.json"
COHORT_SEED, COHORT_N = 7100, 48


def variant(work: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    folder = work / "trained" / "xr-knee-no-women-400it"
    if (folder / CARD_FILE).is_file():
        return folder
    base = RECIPES["xr-knee"]
    recipe = dataclasses.replace(
        base,
        name="xr-knee-no-women",
        description=base.description + " Trained without women (0% women in 60 training subjects, 400 iterations).",
        n_train=60,
        iterations=400,
        train_shift=women_share(0),
    )
    train_model(recipe, folder, workers=1, validate_model=False)
    return folder


def cohort(work: Path) -> Path:
    out = work / f"cohort-knee-{COHORT_N}"
    if not (out / "manifest.csv").is_file():
        make_cohort(CohortRequest(kind="xr-knee", n=COHORT_N, seed=COHORT_SEED), out)
    return out


def imported(bundle_of: Path, work: Path, name: str, backend: str = "auto") -> Path:
    bundle = work / "bundles" / name
    if not bundle.exists():
        export_bundle(bundle_of, bundle)
    root = work / "data" / "models"
    if not (root / name / CARD_FILE).is_file():
        import_model(bundle, root, answers_path=None, name=name, backend=backend)  # type: ignore[arg-type]
    return root / name


def round_trip(work: Path, cohort_dir: Path) -> dict[str, Any]:
    cached = work / "round-trip.json"
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    original = open_segmenter(bundled_models()["xr-knee"], prefer_gpu=False)
    out: dict[str, Any] = {}
    for backend in ("onnx", "torch"):
        again = open_segmenter(imported(bundled_models()["xr-knee"], work, f"xr-knee-rt-{backend}", backend), False)
        worst, same, pixels_total = 0.0, 0, 0
        for found in labelled_cases(cohort_dir):
            case = read_labelled_case(*found)
            a = original.probabilities(case.pixels, case.spacing)
            b = again.probabilities(case.pixels, case.spacing)
            worst = max(worst, float(np.abs(a - b).max()))
            same += int((a.argmax(0) == b.argmax(0)).sum())
            pixels_total += a[0].size
        out[backend] = {
            "max_abs_probability_difference": worst,
            "identical_label_share": same / pixels_total,
            "export_max_abs_difference": again.card.source.export_max_abs_difference if again.card.source else None,
            "sampling": again.card.quality.sampling if again.card.quality else None,
            "images": COHORT_N,
        }
    cached.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


def _row(report: dict[str, Any], grouping: str, group: str | None) -> dict[str, Any]:
    rows = (
        report["overall"]
        if group is None
        else [r for r in report["groups"] if r["grouping"] == grouping and r["group"] == group]
    )
    return {r["structure"]: {m: r[m] for m in ("dice", "nsd", "hd95_mm")} | {"n": r["n"]} for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("work/byom"))
    parser.add_argument("--variant", type=Path, default=None, help="an already trained no-women model folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work: Path = args.work
    t0 = time.perf_counter()
    trained = variant(work, args.variant)
    cohort_dir = cohort(work)
    rt = round_trip(work, cohort_dir)
    no_women = imported(trained, work, "xr-knee-no-women-400it")
    settings = BenchmarkSettings()
    reports = {}
    for name, folder in (("xr-knee", bundled_models()["xr-knee"]), ("xr-knee-no-women-400it", no_women)):
        _, reports[name] = run_benchmark(
            folder, cohort_dir, work / "reports" / name, settings=settings, work=work / "cases", pdf=True
        )
    table = {
        name: {
            "all": _row(r, "", None),
            **{f"sex {g}": _row(r, "sex", g) for g in ("F", "M")},
            "sex_gaps": [
                {
                    k: d[k]
                    for k in ("metric", "structure", "best", "worst", "gap", "gap_low", "gap_high", "ser", "p_holm")
                }
                for d in r["disparities"]
                if d["attribute"] == "sex"
            ],
        }
        for name, r in reports.items()
    }
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/byom.py --work work/byom"
        + (f" --variant {args.variant}" if args.variant else ""),
        "cohort": {"kind": "xr-knee", "n": COHORT_N, "seed": COHORT_SEED, "composition": reports["xr-knee"]["cohort"]},
        "round_trip": rt,
        "benchmark": table,
        "variant": load_card(trained).training.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name, t in table.items():
        for group in ("all", "sex F", "sex M"):
            cells = ", ".join(
                f"{s} {v['dice']['mean']:.3f} [{v['dice']['low']:.3f}, {v['dice']['high']:.3f}]"
                for s, v in t[group].items()
            )
            print(f"{name:18s} {group:6s} Dice: {cells}")
    print(json.dumps(rt, indent=2))


if __name__ == "__main__":
    main()
