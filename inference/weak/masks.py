"""From a score map to a lesion mask, the threshold chosen on a validation split, and the metrics.

A mask is ``score > threshold`` inside the liver region, on slices the classifier calls lesion
(``p >= GATE``, the same gate for every method), with 2D components under ``min_pixels`` removed. For
COIN the score is ``|x - x_cf|`` (intensities 0-1); for the attribution baselines the map scaled to 0-1 per
slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: classifier probability from which a slice is searched for lesions
GATE = 0.5
#: smallest kept 2D component (crop pixels)
MIN_PIXELS = 4
#: share of a true lesion's voxels the mask must cover for the lesion to count as detected
DETECTED_FRACTION = 0.1


def remove_small(mask: np.ndarray, min_pixels: int = MIN_PIXELS) -> np.ndarray:
    """``mask`` ``(n, H, W)`` without 2D components (8-connected) smaller than ``min_pixels``."""
    out = np.zeros_like(mask, dtype=bool)
    structure = np.ones((3, 3), bool)
    for i, plane in enumerate(mask):
        if not plane.any():
            continue
        lab, n = ndimage.label(plane, structure=structure)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        keep = sizes >= min_pixels
        keep[0] = False
        out[i] = keep[lab]
    return out


def to_mask(
    score: np.ndarray,
    threshold: float,
    region: np.ndarray,
    probability: np.ndarray | None = None,
    min_pixels: int = MIN_PIXELS,
) -> np.ndarray:
    """Lesion mask ``(n, H, W)`` from ``score`` ``(n, H, W)``; ``probability`` ``(n,)`` gates slices."""
    if score.shape != region.shape:
        raise ValueError(f"score {score.shape} and region {region.shape} must have the same shape")
    mask = (score > threshold) & region
    if probability is not None:
        mask &= (probability >= GATE)[:, None, None]
    return remove_small(mask, min_pixels)


def scale_per_slice(maps: np.ndarray) -> np.ndarray:
    """Attribution maps ``(n, H, W)`` clipped at 0 and divided by each slice's maximum (0-1)."""
    m = np.clip(maps, 0.0, None)
    top = m.reshape(len(m), -1).max(axis=1)
    return (m / np.where(top > 0, top, 1.0)[:, None, None]).astype(np.float32)


def pooled_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of all voxels together (1.0 when both are empty)."""
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else int((pred & truth).sum()) / union


def choose_threshold(
    score: np.ndarray,
    region: np.ndarray,
    truth: np.ndarray,
    candidates: Sequence[float],
    probability: np.ndarray | None = None,
) -> tuple[float, float]:
    """The candidate threshold with the best pooled IoU on a validation split, and that IoU (first best
    on ties). Lesion-free slices count: what a threshold marks there enlarges the union."""
    best = (float(candidates[0]), -1.0)
    for t in candidates:
        iou = pooled_iou(to_mask(score, float(t), region, probability), truth)
        if iou > best[1]:
            best = (float(t), iou)
    return best


@dataclass(frozen=True)
class SubjectScore:
    """One subject's result: IoU and Dice (lesion subjects), lesions detected of lesions, predicted
    volume (ml) and the volume of false positives (ml)."""

    iou: float | None
    dice: float | None
    detected: int
    lesions: int
    predicted_ml: float
    false_positive_ml: float


def score_subject(pred: np.ndarray, truth: np.ndarray, voxel_ml: float) -> SubjectScore:
    """Compare one subject's stack of slice masks with its lesion truth (3D components = lesions)."""
    lab, n = ndimage.label(truth, structure=np.ones((3, 3, 3), bool))
    detected = 0
    for k in range(1, n + 1):
        lesion = lab == k
        if (pred & lesion).sum() >= DETECTED_FRACTION * lesion.sum():
            detected += 1
    inter, union = int((pred & truth).sum()), int((pred | truth).sum())
    total = int(pred.sum()) + int(truth.sum())
    has = bool(truth.any())
    return SubjectScore(
        iou=inter / union if has else None,
        dice=2 * inter / total if has else None,
        detected=detected,
        lesions=n,
        predicted_ml=float(pred.sum()) * voxel_ml,
        false_positive_ml=float((pred & ~truth).sum()) * voxel_ml,
    )
