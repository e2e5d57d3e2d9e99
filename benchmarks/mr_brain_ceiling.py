"""What limits the mr-brain model's held-out Dice: the model grid, or the network?

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/mr_brain_ceiling.py [--n 10] [--seed 2000]
        [--spacing 1.5 --spacing 1.2 --spacing 1.0] [--model inference/models/mr-brain] [--mirror]
        [--json benchmarks/results/mr_brain_ceiling.json]

For held-out subjects of the validation cohort (``--seed``, generated at native resolution, 1.0-1.2 mm), Dice
against the native truth of four things, per tissue:

- ``nearest``: the truth put on the model grid as training sees it (``labels_to_model_grid``, nearest) and
  brought back as the node brings back a prediction (one-hot, ``probabilities_to_source``, argmax): what a
  network that reproduced its training labels exactly would score;
- ``soft``: the one-hot truth resampled onto the model grid as the image is
  (``label_fractions_to_model_grid``, the training targets of ``Recipe.soft_labels``: each class's
  partial-volume fraction), brought back the same way: what a network that predicted perfect partial-volume
  probabilities would score (the ceiling of that grid for the node's resampling);
- ``model``: the shipped network's prediction through :class:`~inference.segmenter.Segmenter` (the figure of
  the card's validation), and ``model_grid``: the same prediction scored on the model grid against the nearest
  training labels (how well the network learnt what it was shown);
- the shares of the truth's CSF the prediction gives to each other class, and of each other class it calls CSF,
  and how many of its CSF errors lie at the ICV surface (where CSF meets the dark inner table of the skull);
- with ``--mirror``: ``model_mirror``, the probabilities averaged with those of the input mirrored along the
  card's ``mirror_axes`` (test-time mirroring).

The grid figures are repeated for every ``--spacing``; the model figures use the card's spacing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from cohorts import mr_brain
from cohorts.subjects import draw_subject
from inference.metrics import monai_dice_per_label
from inference.model_card import InputSpec
from inference.preprocess import (
    label_fractions_to_model_grid,
    labels_to_model_grid,
    probabilities_to_source,
    to_model_grid,
)
from inference.segmenter import Segmenter
from inference.training import RECIPES

NAMES = tuple(lab.name for lab in mr_brain.LABELS)
N_CLASSES = len(NAMES) + 1


def one_hot(labels: np.ndarray) -> np.ndarray:
    """``(classes, *labels.shape)`` float32 one-hot of a label map."""
    return np.stack([(labels == c) for c in range(N_CLASSES)]).astype(np.float32)


def grid_ceilings(labels: np.ndarray, spacing: tuple[float, ...], spec: InputSpec) -> dict[str, np.ndarray]:
    """Dice per tissue of the ``nearest`` and ``soft`` round trips of ``labels`` through ``spec``'s grid."""
    near = labels_to_model_grid(labels, spacing, spec)[0]
    back = np.argmax(probabilities_to_source(one_hot(near), labels.shape), axis=0)
    soft = label_fractions_to_model_grid(labels, spacing, spec, N_CLASSES)
    soft_back = np.argmax(probabilities_to_source(soft, labels.shape), axis=0)
    return {
        "nearest": monai_dice_per_label(back, labels, N_CLASSES),
        "soft": monai_dice_per_label(soft_back, labels, N_CLASSES),
    }


def model_scores(
    seg: Segmenter, image: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...], mirror: bool
) -> dict[str, np.ndarray]:
    spec = seg.card.input
    x = to_model_grid(image, spacing, spec)
    probs = seg.model_grid_probabilities(x)
    near = labels_to_model_grid(labels, spacing, spec)[0]
    pred = np.argmax(probabilities_to_source(probs, labels.shape), axis=0)
    out: dict[str, np.ndarray] = {
        "csf_errors": csf_errors(pred, labels),
        "model": monai_dice_per_label(pred, labels, N_CLASSES),
        "model_grid": monai_dice_per_label(np.argmax(probs, axis=0), near, N_CLASSES),
    }
    if mirror and spec.mirror_axes:
        flipped = [probs]
        for a in spec.mirror_axes:
            p = seg.model_grid_probabilities(np.ascontiguousarray(np.flip(x, axis=a + 1)))
            flipped.append(np.flip(p, axis=a + 1))
        mean = np.mean(flipped, axis=0)
        out["model_mirror"] = monai_dice_per_label(
            np.argmax(probabilities_to_source(mean, labels.shape), axis=0), labels, N_CLASSES
        )
    return out


#: what the CSF errors of a prediction are, as shares of the truth's CSF volume
CSF_ERRORS = (
    "csf_as_background",
    "csf_as_grey",
    "csf_as_white",
    "background_as_csf",
    "grey_as_csf",
    "white_as_csf",
    "errors_at_brain_edge",
)


def csf_errors(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The :data:`CSF_ERRORS` of ``pred``: truth CSF predicted as each other class and each other class predicted
    as CSF (shares of truth CSF voxels), and the share of all CSF errors within 2 voxels of the boundary between
    the truth's intracranial labels and background (the ICV surface: CSF against the inner table)."""
    csf = float((labels == 3).sum())
    missed = [float(((labels == 3) & (pred == c)).sum()) / csf for c in (0, 1, 2)]
    extra = [float(((pred == 3) & (labels == c)).sum()) / csf for c in (0, 1, 2)]
    outside = labels == 0
    edge = ndimage.binary_dilation(outside, iterations=2) ^ ndimage.binary_erosion(outside, iterations=2)
    wrong = (pred == 3) != (labels == 3)
    return np.array([*missed, *extra, float((wrong & edge).sum()) / max(float(wrong.sum()), 1.0)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--spacing", type=float, action="append")
    ap.add_argument("--model", type=Path, default=None, help="score this model too (a model folder)")
    ap.add_argument("--mirror", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spacings = args.spacing or [1.5]
    seg = Segmenter(args.model, prefer_gpu=False) if args.model else None
    base = seg.card.input if seg else RECIPES["mr-brain"].input
    rows: dict[str, list[np.ndarray]] = {}
    errors: list[np.ndarray] = []
    for i in range(args.n):
        synth = mr_brain.generate(draw_subject(mr_brain.KIND, i, args.seed))
        for s in spacings:
            spec = base.model_copy(update={"spacing_mm": (s, s, s)})
            for k, v in grid_ceilings(synth.labels, synth.spacing, spec).items():
                rows.setdefault(f"{k}@{s}", []).append(v)
        if seg is not None:
            scores = model_scores(seg, synth.pixels, synth.labels, synth.spacing, args.mirror)
            errors.append(scores.pop("csf_errors"))
            for k, v in scores.items():
                rows.setdefault(k, []).append(v)
        print(f"subject {i}: " + ", ".join(f"{k} {np.round(v[-1], 3).tolist()}" for k, v in rows.items()), flush=True)
    table: dict[str, dict[str, float]] = {
        k: {n: round(float(np.nanmean(np.stack(v)[:, j])), 4) for j, n in enumerate(NAMES)} for k, v in rows.items()
    }
    print(f"\nmean Dice over {args.n} subjects (seed {args.seed}):")
    for key, means in table.items():
        print(f"  {key:16s} " + "  ".join(f"{n} {d:.4f}" for n, d in means.items()))
    result: dict[str, object] = {"n": args.n, "seed": args.seed, "model": str(args.model), "dice": table}
    if errors:
        shares = [round(float(v), 4) for v in np.mean(np.stack(errors), axis=0)]
        mean_errors = dict(zip(CSF_ERRORS, shares, strict=True))
        print("  CSF errors (shares of truth CSF; last: share of CSF errors at the ICV surface):")
        print("  " + "  ".join(f"{k} {v:.3f}" for k, v in mean_errors.items()))
        result["csf_errors"] = mean_errors
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
