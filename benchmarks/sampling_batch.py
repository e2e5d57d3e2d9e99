"""MC-dropout sampling: one sliding-window pass per sample, one window per network call (the former way), against
all windows of all samples in one batched call (what :class:`inference.segmenter.Segmenter` does now).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/sampling_batch.py [--model ct-abdomen]
        [--samples 4] [--repeat 3] [--backend onnx-cpu] [--threads 1] [--json out.json]

The input is a cohort image on the model grid (ct-abdomen: subject 5 of seed 600 at 512 matrix, 2.5 mm, as
``benchmarks/pipeline.py`` uses; xr-knee: subject 0 of seed 7). Prints the median and fastest seconds of each
way (runs interleaved), the speed-up, whether the samples are distinct, and the predictor's uncertainty inputs
(mean entropy and mutual information over the predicted foreground, mean voxel spread) of both ways, which must
agree in distribution.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cohorts import ct_abdomen, xr_knee
from cohorts.subjects import draw_subject
from inference.backends import InferenceSettings
from inference.model_card import MODELS_DIR
from inference.preprocess import to_model_grid
from inference.segmenter import Segmenter, window_count
from quality.uncertainty import maps

#: wide enough for the table when the output goes to a file or a pipe
console = Console(width=None if sys.stdout.isatty() else 160)


def model_input(seg: Segmenter) -> np.ndarray:
    if seg.card.name == "ct-abdomen":
        image = ct_abdomen.generate(draw_subject("ct-abdomen", 5, 600), matrix=512, slice_thickness=2.5)
    else:
        image = xr_knee.generate(draw_subject("xr-knee", 0, 7))
    return to_model_grid(image.pixels, image.spacing, seg.card.input)


def features(samples: np.ndarray) -> list[float]:
    m = maps(samples)
    fg = m.mean_probabilities.argmax(0) > 0
    return [float(m.entropy[fg].mean()), float(m.mutual_information[fg].mean()), float(samples.std(0).mean())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="ct-abdomen", choices=["ct-abdomen", "xr-knee"])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", default="onnx-cpu", choices=["onnx-cpu", "torch-cpu", "onnx-cuda", "torch-cuda"])
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime and torch threads")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = MODELS_DIR / args.model
    batched = Segmenter(folder, settings=InferenceSettings(backend=args.backend, ort_threads=args.threads))
    # max_batch_voxels 1: one window per network call, as before batching
    single = Segmenter(
        folder, settings=InferenceSettings(backend=args.backend, ort_threads=args.threads, max_batch_voxels=1)
    )
    x = model_input(batched)
    windows = window_count(x.shape[1:], batched.card.input.patch_size, batched.overlap)
    n = args.samples

    def former() -> np.ndarray:
        return np.stack([single.model_grid_probabilities(x, mc_dropout=True) for _ in range(n)])

    def now() -> np.ndarray:
        return batched.samples(x, n)

    ways = {"one pass per sample": former, "batched (windows x samples)": now}
    runs: dict[str, list[float]] = {name: [] for name in ways}
    feats: dict[str, list[list[float]]] = {name: [] for name in ways}
    last: dict[str, np.ndarray] = {}
    former(), now()  # warm-up (graph optimisation, first allocation)
    for _ in range(args.repeat):  # interleaved, so that a busy spell of the machine hits both ways alike
        for name, fn in ways.items():
            t = time.perf_counter()
            last[name] = fn()
            runs[name].append(time.perf_counter() - t)
            feats[name].append(features(last[name]))
    results: dict[str, dict[str, object]] = {}
    for name, s in last.items():
        results[name] = {
            "median_s": statistics.median(runs[name]),
            "min_s": min(runs[name]),
            "runs_s": runs[name],
            "min_pair_max_abs_diff": min(float(np.abs(s[i] - s[j]).max()) for i in range(n) for j in range(i)),
            "features_mean": np.mean(feats[name], axis=0).tolist(),
            "features_sd": np.std(feats[name], axis=0).tolist(),
        }
    table = Table(
        title=f"{args.model}: {n} MC samples of a {x.shape[1:]} model grid ({windows} windows), {args.backend}, "
        f"{args.threads} thread(s)"
    )
    for col in ("way", "median s", "min s", "speed-up", "min pair max|diff|", "entropy fg", "MI fg", "voxel sd"):
        table.add_column(col, justify="right" if col != "way" else "left", no_wrap=True)
    base = float(results["one pass per sample"]["median_s"])  # type: ignore[arg-type]
    for name, r in results.items():
        f, sd = r["features_mean"], r["features_sd"]
        cells = [f"{m:.4f}±{e:.4f}" for m, e in zip(f, sd, strict=True)]  # type: ignore[call-overload]
        med = float(r["median_s"])  # type: ignore[arg-type]
        table.add_row(
            name,
            f"{med:.2f}",
            f"{float(r['min_s']):.2f}",
            f"{base / med:.2f}x",
            f"{r['min_pair_max_abs_diff']:.3f}",
            *cells,
        )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "samples": n, "windows": windows, **results}, indent=2))


if __name__ == "__main__":
    main()
