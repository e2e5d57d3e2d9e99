"""Which input lets COIN's slice classifier generalise? Validation AUC of the lesion classifier per input.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/coin_classifier_inputs.py [--steps 1000]
        [--out benchmarks/results/coin_classifier_inputs.json]

Runs on the slices ``benchmarks/coin.py prepare`` caches (``work/coin/subjects``): the classifier of
``inference.weak.nets`` (same layers, same training, ``inference.weak.training.train_classifier``, image-level
labels only) with a first layer for each input:

- ``slice``: the liver-box crop alone (what the shipped model sees);
- ``2.5d``: the crop and its two neighbour slices of the same subject (edge slices repeat themselves);
- ``2.5d+region``: those three and the liver region (the organ model's liver, closed and grown) as a fourth
  channel, so that the network can tell a dark blob inside the liver from the gallbladder or a vessel beside it.

Prints and writes the training and validation AUC and the training time of each. The region is the one the
node computes from its organ model; no lesion mask is read (training runs inside ``no_truth_access``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import Classifier
from rich.console import Console
from rich.table import Table
from torch import nn

from benchmarks.coin import _auc, _split
from inference.weak import nets, training
from inference.weak.slices import CROP, SliceSet


def with_inputs(data: SliceSet, neighbours: bool, region: bool) -> SliceSet:
    """``data`` with its images stacked as the input asks: neighbour slices, region channel."""
    images = data.images[:, 0]
    index = {(int(s), int(k)): i for i, (s, k) in enumerate(zip(data.subject, data.slice_index, strict=True))}
    stacks = []
    for i, (s, k) in enumerate(zip(data.subject, data.slice_index, strict=True)):
        channels = [images[i]]
        if neighbours:
            below = images[index.get((int(s), int(k) - 1), i)]
            above = images[index.get((int(s), int(k) + 1), i)]
            channels = [below, images[i], above]
        if region:
            channels.append(data.regions[i].astype(np.float32))
        stacks.append(np.stack(channels))
    return SliceSet(np.asarray(stacks, np.float32), data.labels, data.regions, data.subject, data.slice_index)


def classifier_for(channels: int) -> Callable[[], nn.Module]:
    """:func:`inference.weak.nets.classifier` with ``channels`` input channels."""

    def make() -> nn.Module:
        model = Classifier(
            (channels, CROP, CROP), 1, nets.CLASSIFIER_CHANNELS, (2, 2, 2, 1), num_res_units=1, dropout=nets.DROPOUT
        )
        model.final = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(nets.CLASSIFIER_CHANNELS[-1], 1))
        return model

    return make


def _scores(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = [model(torch.from_numpy(images[i : i + 64]))[:, 0] for i in range(0, len(images), 64)]
    return torch.sigmoid(torch.cat(logits)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/coin_classifier_inputs.json"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    train_cases, val_cases = _split("train"), _split("val")
    if not train_cases or not val_cases:
        parser.error("no cached slices under work/coin/subjects: run benchmarks/coin.py prepare first")
    train = SliceSet.concatenate([d for d, _, _ in train_cases])
    val = SliceSet.concatenate([d for d, _, _ in val_cases])
    made = nets.classifier
    results = {}
    try:
        for name, neighbours, region in (("slice", False, False), ("2.5d", True, False), ("2.5d+region", True, True)):
            tr, va = with_inputs(train, neighbours, region), with_inputs(val, neighbours, region)
            nets.classifier = classifier_for(tr.images.shape[1])  # what train_classifier builds
            t0 = time.perf_counter()
            model, _ = training.train_classifier(tr, steps=args.steps)
            results[name] = {
                "train_auc": round(_auc(tr.labels, _scores(model, tr.images)), 4),
                "validation_auc": round(_auc(va.labels, _scores(model, va.images)), 4),
                "seconds": round(time.perf_counter() - t0, 1),
            }
    finally:
        nets.classifier = made
    table = Table(title=f"lesion classifier by input ({args.steps} steps, {len(train)} / {len(val)} slices)")
    for column in ("input", "train AUC", "validation AUC", "s"):
        table.add_column(column, justify="left" if column == "input" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['train_auc']:.3f}", f"{r['validation_auc']:.3f}", f"{r['seconds']:.0f}")
    Console(width=120).print(table)
    payload = {
        "steps": args.steps,
        "train_slices": len(train),
        "validation_slices": len(val),
        "inputs": results,
        "load_average": os.getloadavg(),
        "command": f"OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/coin_classifier_inputs.py "
        f"--steps {args.steps}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
