"""Scores of propagated labels against a reference's truth: Dice per label and HD95 (mm)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice_per_label(pred: np.ndarray, truth: np.ndarray, n_labels: int) -> np.ndarray:
    """Dice of labels ``1..n_labels``; 1.0 where a label is absent from both maps."""
    n = n_labels + 1
    joint = np.bincount(pred.ravel().astype(np.int64) * n + truth.ravel(), minlength=n * n).reshape(n, n)
    inter = np.diag(joint)[1:].astype(np.float64)
    sizes = joint.sum(axis=1)[1:] + joint.sum(axis=0)[1:]
    return np.where(sizes > 0, 2 * inter / np.maximum(sizes, 1), 1.0)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th percentile symmetric surface distance (mm; max of the two directed ones); nan if a mask is empty."""
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
