"""Uncertainty from N stochastic samples: per-voxel maps and per-structure scores.

The samples are softmax outputs of the same network on the same image, drawn with MC dropout or test-time
augmentation (``inference.segmenter.Segmenter.samples``). From them:

- per voxel: the mean probability, its predictive entropy ``H[p̄]`` and the mutual information
  ``H[p̄] - mean_s H[p_s]`` (the part of the entropy due to disagreement between samples), in bits;
- per structure, the scores that track its Dice (Roy et al. 2019): mean entropy inside the predicted
  structure, mean pairwise Dice between the samples' masks, and the coefficient of variation of its volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from inference.metrics import dice
from quality.types import StructureUncertainty, UncertaintyMaps

_EPS = 1e-7


def entropy_bits(p: np.ndarray, axis: int = 0) -> np.ndarray:
    """Shannon entropy (bits) of the distributions along ``axis``."""
    q = np.clip(p, _EPS, 1.0)
    return np.asarray(-(p * np.log2(q)).sum(axis=axis), dtype=np.float32)


def maps(samples: np.ndarray) -> UncertaintyMaps:
    """Mean probability, predictive entropy and mutual information of ``samples`` ``(n, classes, *spatial)``."""
    if samples.ndim < 3 or samples.shape[0] < 2:
        raise ValueError(f"samples must be (n >= 2, classes, *spatial), got shape {samples.shape}")
    mean = samples.mean(axis=0, dtype=np.float32)
    entropy = entropy_bits(mean)
    expected = np.mean([entropy_bits(s) for s in samples], axis=0, dtype=np.float32)
    mutual = np.clip(entropy - expected, 0.0, None).astype(np.float32)
    return UncertaintyMaps(mean_probabilities=mean, entropy=entropy, mutual_information=mutual)


def structure_scores(
    samples: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    label_names: Sequence[str],
    uncertainty: UncertaintyMaps | None = None,
) -> list[StructureUncertainty]:
    """Scores of every structure of the model (label values ``1..len(label_names)``).

    Parameters
    ----------
    samples
        ``(n, classes, *spatial)`` softmax samples.
    labels
        ``(*spatial)`` the label map being assessed (the deterministic prediction), same grid.
    spacing
        millimetres per spatial axis; volumes come out in ml for 3D grids and mm² for 2D ones.
    label_names
        names of labels 1..L.
    uncertainty
        the maps of ``samples`` if already computed.

    A structure the prediction leaves empty gets its entropy from the voxels any sample assigns to it
    (0 if none does), its volume 0 and, if some samples do find it, a low sample agreement.
    """
    if labels.shape != samples.shape[2:]:
        raise ValueError(f"labels {labels.shape} and samples {samples.shape[2:]} must be on the same grid")
    u = uncertainty or maps(samples)
    voxel = float(np.prod(spacing)) / (1000.0 if labels.ndim == 3 else 1.0)
    sample_labels = samples.argmax(axis=1)
    out = []
    for value, name in enumerate(label_names, start=1):
        masks = [s == value for s in sample_labels]
        inside = labels == value
        region = inside if inside.any() else np.logical_or.reduce(masks)
        mean_h = float(u.entropy[region].mean()) if region.any() else 0.0
        mean_mi = float(u.mutual_information[region].mean()) if region.any() else 0.0
        agreement = float(np.mean([dice(a, b) for a, b in combinations(masks, 2)]))
        volumes = np.array([m.sum() for m in masks], dtype=np.float64) * voxel
        cv = float(volumes.std() / volumes.mean()) if volumes.mean() > 0 else 0.0
        out.append(
            StructureUncertainty(
                label=value,
                name=name,
                volume=float(inside.sum()) * voxel,
                mean_entropy=mean_h,
                mean_mutual_information=mean_mi,
                sample_dice=agreement,
                volume_cv=cv,
            )
        )
    return out
