"""What a finer model grid costs and gives the mr-brain model: held-out Dice from each model's card and the time
per study of each inference stage, on the same subjects.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/mr_brain_grid.py --train 1.2 work/mr-brain-1.2
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/mr_brain_grid.py \
        --model inference/models/mr-brain --model work/mr-brain-1.2/mr-brain [--n 3] [--seed 2000] \
        [--json benchmarks/results/mr_brain_grid.json]

``--train SPACING FOLDER`` runs the mr-brain recipe (``inference.training.train_model``: same cohorts, seeds,
patch and schedule) on a grid of ``SPACING`` mm into ``FOLDER/mr-brain``, validated as the card's model is (40
held-out subjects, seed 2000), and prints its Dice.

For every ``--model`` folder (the same network on another grid: the card's ``input.spacing_mm``) and each of
``--n`` subjects of the validation cohort (``--seed``, generated at native resolution, 1.0-1.2 mm), one
thread of ONNX Runtime CPU, the seconds of:

- ``to_model_grid``: normalisation and resampling onto the model grid;
- ``inference``: the deterministic network's sliding window over the model grid (``windows`` of the patch);
- ``to_source``: the probabilities brought back to the source grid as labels (``labels_to_source``);
- ``samples``: the card's MC-dropout samples (``quality.samples``, else 4), as the pipeline's quality stage
  draws them;

and the Dice per tissue of the deterministic labels against the native truth (these ``--n`` subjects; the card's
``validation.dice`` is the figure of its 40 held-out subjects, repeated in the result).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cohorts import mr_brain
from cohorts.subjects import draw_subject
from inference.backends import InferenceSettings
from inference.metrics import monai_dice_per_label
from inference.preprocess import labels_to_source, to_model_grid
from inference.segmenter import Segmenter, window_count
from inference.training import RECIPES, train_model

NAMES = tuple(lab.name for lab in mr_brain.LABELS)
STAGES = ("to_model_grid", "inference", "to_source", "samples")


@dataclass
class Study:
    """One study through one model: seconds of each of :data:`STAGES`, the model grid, its windows, Dice."""

    seconds: dict[str, float]
    grid: tuple[int, ...]
    windows: int
    dice: np.ndarray


def time_study(seg: Segmenter, image: np.ndarray, spacing: tuple[float, ...], truth: np.ndarray) -> Study:
    """Time each of :data:`STAGES` for ``image`` through ``seg``; Dice of its labels against ``truth``."""
    spec = seg.card.input
    samples = seg.card.quality.samples if seg.card.quality else 4
    t0 = time.perf_counter()
    x = to_model_grid(image, spacing, spec)
    t1 = time.perf_counter()
    probs = seg.model_grid_probabilities(x)
    t2 = time.perf_counter()
    labels = labels_to_source(probs, image.shape)
    t3 = time.perf_counter()
    seg.samples(x, samples)
    t4 = time.perf_counter()
    return Study(
        seconds=dict(zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True)),
        grid=tuple(x.shape[1:]),
        windows=window_count(x.shape[1:], spec.patch_size, seg.overlap),
        dice=monai_dice_per_label(labels, truth, len(NAMES) + 1),
    )


def summary(seg: Segmenter, studies: list[Study]) -> dict[str, object]:
    """Means over ``studies`` of one model, with its card's grid, held-out validation and training time."""
    card = seg.card
    seconds = {k: round(float(np.mean([s.seconds[k] for s in studies])), 2) for k in STAGES}
    dice = np.nanmean(np.stack([s.dice for s in studies]), axis=0)
    return {
        "version": card.version,
        "spacing_mm": card.input.spacing_mm[0],
        "patch": list(card.input.patch_size),
        "grid_voxels": round(float(np.mean([np.prod(s.grid) for s in studies]))),
        "windows": round(float(np.mean([s.windows for s in studies])), 1),
        "samples": card.quality.samples if card.quality else 4,
        "seconds_per_study": seconds | {"total": round(sum(seconds.values()), 2)},
        "dice_these_subjects": {n: round(float(d), 4) for n, d in zip(NAMES, dice, strict=True)},
        "validation": (
            {"n": card.validation.cohort.n, "seed": card.validation.cohort.seed, "dice": card.validation.dice}
            if card.validation
            else None
        ),
        "training_seconds": card.training.seconds,
    }


def train_variant(spacing: float, folder: Path) -> None:
    """The mr-brain recipe on a grid of ``spacing`` mm (version 1.2.0), trained and validated into ``folder``."""
    base = RECIPES["mr-brain"]
    spec = base.input.model_copy(update={"spacing_mm": (spacing,) * 3})
    card = train_model(dataclasses.replace(base, version="1.2.0", input=spec), folder / base.name, workers=1)
    dice = card.validation.dice if card.validation else {}
    print(f"{spacing} mm: {card.training.seconds} s; held-out Dice {dice}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, action="append", default=[], help="a model folder (repeat)")
    ap.add_argument("--train", nargs=2, metavar=("SPACING", "FOLDER"), default=None)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.train:
        train_variant(float(args.train[0]), Path(args.train[1]))
    if not args.model:
        return
    settings = InferenceSettings(backend="onnx-cpu", ort_threads=1)
    segs = [Segmenter(m, prefer_gpu=False, settings=settings) for m in args.model]
    studies: list[list[Study]] = [[] for _ in segs]
    for i in range(args.n):
        synth = mr_brain.generate(draw_subject(mr_brain.KIND, i, args.seed))
        for seg, rows in zip(segs, studies, strict=True):
            s = time_study(seg, synth.pixels, synth.spacing, synth.labels)
            rows.append(s)
            print(
                f"subject {i} {seg.card.version} ({seg.card.input.spacing_mm[0]} mm, grid {s.grid}, {s.windows} "
                "windows): "
                + ", ".join(f"{k} {v:.1f} s" for k, v in s.seconds.items())
                + f"; Dice {np.round(s.dice, 3).tolist()}",
                flush=True,
            )
    models = {str(m): summary(seg, rows) for m, seg, rows in zip(args.model, segs, studies, strict=True)}
    for m, row in models.items():
        print(f"{m}: {row}")
    result = {"n": args.n, "seed": args.seed, "threads": 1, "backend": "onnx-cpu", "models": models}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
