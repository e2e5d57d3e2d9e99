"""Overlap and surface scores of segmentations: Dice, HD95 and NSD, with one stated convention for empty masks.

Two families, the same conventions:

- exact scores on numpy arrays (:func:`dice`, :func:`dice_per_label`, :func:`hd95`): voxel counts and exact
  Euclidean distance transforms in float64, fast enough to run many times per case (the agreement of the
  stochastic samples, reverse classification accuracy, validation against ground truth);
- :func:`monai_scores`: Dice, NSD and HD95 of one structure with MONAI's metrics (``compute_dice``,
  ``compute_surface_dice``, ``compute_hausdorff_distance``; float32 tensors), for the truth a radiologist's
  correction gives.
- :func:`monai_dice_per_label`: Dice of every label of two label maps with MONAI's ``compute_dice``, for
  held-out validation of a trained model (the figures on its card).

Empty masks
-----------
- Dice: both masks empty -> ``both_empty`` (default ``1.0``: nothing to find, nothing found); exactly one
  empty -> ``0.0``. A caller that wants such a structure left out of a mean passes ``both_empty=nan``.
- HD95: ``nan`` when either mask is empty (undefined, not infinite).
- NSD: ``nan`` when both are empty, ``0.0`` when exactly one is.
- Validation Dice (:func:`monai_dice_per_label`): ``nan`` where the truth lacks the label (MONAI's
  ``ignore_empty``): a structure absent from the truth is not scored, whatever was predicted.

Arrays are boolean masks (or integer label maps for :func:`dice_per_label`) of one grid, ``(slices, rows,
columns)`` or ``(rows, columns)``; spacings are mm per axis in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Dice of two empty masks unless a caller says otherwise.
BOTH_EMPTY_DICE = 1.0


def dice(a: np.ndarray, b: np.ndarray, *, both_empty: float = BOTH_EMPTY_DICE) -> float:
    """Dice of two boolean masks of one shape; ``both_empty`` when both are empty, 0.0 when one is."""
    total = int(a.sum()) + int(b.sum())
    return both_empty if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def dice_per_label(
    pred: np.ndarray, truth: np.ndarray, n_labels: int, *, both_empty: float = BOTH_EMPTY_DICE
) -> np.ndarray:
    """Dice of labels ``1..n_labels`` of two integer label maps (one joint histogram).

    Returns
    -------
    numpy.ndarray
        float64 ``(n_labels,)``; ``both_empty`` where a label is absent from both maps.
    """
    n = n_labels + 1
    joint = np.bincount(pred.ravel().astype(np.int64) * n + truth.ravel(), minlength=n * n).reshape(n, n)
    inter = np.diag(joint)[1:].astype(np.float64)
    sizes = joint.sum(axis=1)[1:] + joint.sum(axis=0)[1:]
    return np.where(sizes > 0, 2 * inter / np.maximum(sizes, 1), both_empty)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th percentile symmetric surface distance (mm; max of the two directed ones); nan if a mask is empty.

    Surfaces are the mask voxels with a 6- (4-) connected neighbour outside, computed within the common
    bounding box; distances are exact Euclidean distance transforms with ``spacing`` (mm per axis).
    """
    if not a.any() or not b.any():
        return float("nan")
    both = np.argwhere(a | b)
    lo = np.maximum(both.min(axis=0) - 1, 0)
    hi = both.max(axis=0) + 2
    crop = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi, strict=True))
    sa, sb = _surface(a[crop]), _surface(b[crop])
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return float(max(np.percentile(to_b[sa], 95), np.percentile(to_a[sb], 95)))


@dataclass(frozen=True)
class SurfaceScores:
    """Dice, NSD and HD95 (mm) of one structure; ``nan`` where undefined (see the module's conventions)."""

    dice: float
    nsd: float
    hd95_mm: float


def monai_scores(
    predicted: np.ndarray, reference: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> SurfaceScores:
    """Dice, NSD at ``tolerance_mm`` and HD95 of two boolean masks with MONAI's metrics.

    Parameters
    ----------
    predicted, reference
        boolean masks of one shape (crop them to the structure first: MONAI works on the whole array).
    spacing
        mm per axis of the arrays.
    tolerance_mm
        NSD tolerance in mm.

    Returns
    -------
    SurfaceScores
        Dice (``compute_dice``, background excluded, 1.0 when both are empty); NSD (``compute_surface_dice``)
        and HD95 (``compute_hausdorff_distance``, ``percentile=95``) when both masks hold the structure, else
        NSD 0.0 (one empty) or nan (both) and HD95 nan.
    """
    # torch and MONAI only where this is called: the exact scores above stay importable without them
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    # MONAI wants (batch, channel, *spatial) one-hot tensors: channel 0 background, 1 the structure
    yp = torch.from_numpy(np.stack([~predicted, predicted])[None].astype(np.float32))
    yr = torch.from_numpy(np.stack([~reference, reference])[None].astype(np.float32))
    overlap = float(compute_dice(yp, yr, include_background=False, ignore_empty=False)[0, 0])
    has_p, has_r = bool(predicted.any()), bool(reference.any())
    if has_p and has_r:
        sp = [float(s) for s in spacing]
        nsd = float(compute_surface_dice(yp, yr, [tolerance_mm], spacing=sp)[0, 0])
        distance = float(compute_hausdorff_distance(yp, yr, percentile=95, spacing=sp)[0, 0])
        return SurfaceScores(dice=overlap, nsd=nsd, hd95_mm=distance)
    return SurfaceScores(dice=overlap, nsd=0.0 if has_p or has_r else math.nan, hd95_mm=math.nan)


def monai_dice_per_label(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice of each foreground class of two integer label maps with MONAI's ``compute_dice``.

    Parameters
    ----------
    pred, truth
        label maps of one grid, values ``0..n_classes - 1`` (0 is background).
    n_classes
        number of classes, background included.

    Returns
    -------
    numpy.ndarray
        ``(n_classes - 1,)``; ``nan`` where ``truth`` lacks the class (``ignore_empty=True``).
    """
    import torch
    from monai.metrics import compute_dice

    p = torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), n_classes)
    t = torch.nn.functional.one_hot(torch.from_numpy(truth.astype(np.int64)), n_classes)
    dims = pred.ndim
    p = p.permute(dims, *range(dims))[None]
    t = t.permute(dims, *range(dims))[None]
    return np.asarray(compute_dice(p, t, include_background=False, ignore_empty=True))[0]
