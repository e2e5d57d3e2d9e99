"""What a larger network and a longer schedule give the mr-brain model: a variant of its recipe trained and
validated as the card's model is.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/mr_brain_network.py work/mr-brain-deep \
        --channels 16 32 64 128 256 --strides 2 2 2 2 --iterations 4200 [--res-units 1] [--patch 64] \
        [--spacing 1.5] [--dropout 0.1] [--learning-rate 0.002] [--version 1.3.0] \
        [--json benchmarks/results/mr_brain_network.json]

The mr-brain recipe (``inference.training.RECIPES["mr-brain"]``: same cohorts, seeds, soft labels, loss and
augmentation) with the given recipe parameters replaced, run by ``inference.training.train_model`` on one
thread into ``FOLDER/mr-brain`` and validated there as the card's model is (40 held-out subjects, seed 2000,
at native resolution). Prints the held-out Dice per tissue and the training seconds, with the loss every 200
iterations; with ``--json`` the variant's parameters and figures are added to that file (one entry per
folder, the shipped card's figures beside them). The per-study inference cost of a trained variant is
measured by ``benchmarks/mr_brain_grid.py --model inference/models/mr-brain --model FOLDER/mr-brain --json
benchmarks/results/mr_brain_network_cost.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from inference.model_card import load_card
from inference.training import RECIPES, Recipe, TrainingProgress, train_model

SHIPPED = Path("inference/models/mr-brain")


class LossLog(TrainingProgress):
    """Prints each stage and the training loss every ``every`` iterations, with the seconds since start."""

    def __init__(self, every: int = 200) -> None:
        self.every = every
        self.count = 0
        self.t0 = time.perf_counter()

    def stage(self, name: str, total: int) -> None:
        self.count = 0
        print(f"[{time.perf_counter() - self.t0:7.0f} s] {name}", flush=True)

    def advance(self, info: str = "") -> None:
        self.count += 1
        if info and self.count % self.every == 0:
            print(f"[{time.perf_counter() - self.t0:7.0f} s] iteration {self.count}: {info}", flush=True)


def variant_recipe(args: argparse.Namespace) -> Recipe:
    """The mr-brain recipe with the parameters of ``args`` in place of its own."""
    base = RECIPES["mr-brain"]
    network = base.network.model_copy(
        update={
            "channels": tuple(args.channels),
            "strides": tuple(args.strides),
            "num_res_units": args.res_units,
            "dropout": args.dropout,
        }
    )
    spec = base.input.model_copy(update={"spacing_mm": (args.spacing,) * 3, "patch_size": (args.patch,) * 3})
    return dataclasses.replace(
        base,
        version=args.version,
        input=spec,
        network=network,
        iterations=args.iterations,
        learning_rate=args.learning_rate,
    )


def card_row(folder: Path) -> dict[str, object]:
    """Recipe parameters, held-out Dice and training seconds of the model card in ``folder``."""
    card = load_card(folder)
    return {
        "version": card.version,
        "spacing_mm": card.input.spacing_mm[0],
        "patch": list(card.input.patch_size),
        "channels": list(card.network.channels),
        "strides": list(card.network.strides),
        "num_res_units": card.network.num_res_units,
        "dropout": card.network.dropout,
        "iterations": card.training.iterations,
        "learning_rate": card.training.learning_rate,
        "training_seconds": card.training.seconds,
        "validation": (
            {"n": card.validation.cohort.n, "seed": card.validation.cohort.seed, "dice": card.validation.dice}
            if card.validation
            else None
        ),
    }


def main() -> None:
    base = RECIPES["mr-brain"]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="the variant is written into FOLDER/mr-brain")
    ap.add_argument("--channels", type=int, nargs="+", default=list(base.network.channels))
    ap.add_argument("--strides", type=int, nargs="+", default=list(base.network.strides))
    ap.add_argument("--res-units", type=int, default=base.network.num_res_units)
    ap.add_argument("--dropout", type=float, default=base.network.dropout)
    ap.add_argument("--patch", type=int, default=base.input.patch_size[0])
    ap.add_argument("--spacing", type=float, default=base.input.spacing_mm[0])
    ap.add_argument("--iterations", type=int, default=base.iterations)
    ap.add_argument("--learning-rate", type=float, default=base.learning_rate)
    ap.add_argument("--version", default="1.3.0")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if len(args.strides) != len(args.channels) - 1:
        ap.error(f"--strides needs {len(args.channels) - 1} values for {len(args.channels)} channels")
    torch.set_num_threads(1)
    recipe = variant_recipe(args)
    model_dir = args.folder / recipe.name
    card = train_model(recipe, model_dir, workers=1, progress=LossLog())
    print(f"{model_dir}: {card.training.seconds} s; held-out Dice {card.validation.dice if card.validation else {}}")
    if args.json:
        result = json.loads(args.json.read_text()) if args.json.exists() else {}
        result.setdefault("models", {})[str(SHIPPED)] = card_row(SHIPPED)
        result["models"][str(model_dir)] = card_row(model_dir)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
