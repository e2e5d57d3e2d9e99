"""Where a structure's uncertainty lies: a few numbers per structure, kept in the registry for the audit.

The fairness audit asks not only *whether* a group's segmentations are worse but *where* the errors fall
(Li et al. 2024 found disparities in the spatial distribution of errors, not only in mean Dice). Images
are not kept in the registry, so at processing time each structure's entropy map is reduced to the share
of its uncertainty that falls in each of a few regions:

``boundary``
    within ``boundary_mm`` of the predicted structure's surface, inside or outside;
``superior``, ``middle``, ``inferior``
    thirds of the structure's neighbourhood along the first image axis;
``left``, ``centre``, ``right``
    thirds along the last image axis, named for the patient's side;
``field_edge``
    within ``field_edge_mm`` of the image border (a truncated field of view or scan range).

The neighbourhood of a structure is the predicted structure dilated by ``margin_mm``; its uncertainty
mass is the entropy (bits) summed over it, and each share is the part of that mass in the region, in
[0, 1]. The three thirds of an axis sum to 1; ``boundary`` and ``field_edge`` are independent shares.

Axis naming follows the node's volumes (:mod:`dicom_node.volume`): slices and radiograph rows run from
head to feet (first axis: index 0 is superior) and columns run towards the patient's left (last axis:
index 0 is the patient's right). For a structure with no predicted voxel, or no uncertainty in its
neighbourhood, no shares are given (an empty mapping): there is nothing to locate.

Pure: arrays in, numbers out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["REGION_KEYS", "region_shares", "structure_regions"]

#: Keys of each structure's region shares, in the order reports show them.
REGION_KEYS: tuple[str, ...] = (
    "boundary",
    "superior",
    "middle",
    "inferior",
    "left",
    "centre",
    "right",
    "field_edge",
)


def _thirds(weights: np.ndarray, axis: int, lo: int, hi: int) -> tuple[float, float, float]:
    """Shares of ``weights`` in the three thirds of ``[lo, hi)`` along ``axis`` (weights outside are zero)."""
    profile = weights.sum(axis=tuple(a for a in range(weights.ndim) if a != axis))
    edges = np.linspace(lo, hi, 4)
    index = np.arange(profile.size)
    total = float(profile.sum())
    parts = [float(profile[(index >= edges[i]) & (index < edges[i + 1])].sum()) for i in range(3)]
    parts[2] += float(profile[index >= edges[3]].sum())  # hi itself belongs to the last third
    return (parts[0] / total, parts[1] / total, parts[2] / total)


def structure_regions(
    entropy: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    *,
    margin_mm: float = 10.0,
    boundary_mm: float | None = None,
    field_edge_mm: float = 10.0,
) -> dict[str, float]:
    """Region shares (:data:`REGION_KEYS`) of one structure's uncertainty.

    Parameters
    ----------
    entropy
        ``(*spatial)`` predictive entropy in bits (2D or 3D), on the same grid as ``mask``.
    mask
        ``(*spatial)`` boolean, the predicted structure.
    spacing
        millimetres per spatial axis, in array order.
    margin_mm
        dilation of the structure that defines its neighbourhood, mm.
    boundary_mm
        half-width of the boundary band, mm; default twice the coarsest spacing.
    field_edge_mm
        distance from the image border counted as the field edge, mm.

    Returns
    -------
    dict of str to float
        Shares in [0, 1]; empty when the structure is empty or has no uncertainty around it.
    """
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy {entropy.shape} and mask {mask.shape} must be on the same grid")
    if len(spacing) != mask.ndim:
        raise ValueError(f"spacing has {len(spacing)} values for a {mask.ndim}D grid")
    mask = mask.astype(bool)
    if not mask.any():
        return {}
    sampling = tuple(float(s) for s in spacing)
    band = boundary_mm if boundary_mm is not None else 2.0 * max(sampling)
    # Work on the structure's box grown by the neighbourhood: same result, a fraction of the voxels.
    found = np.argwhere(mask)
    reach = [int(np.ceil(max(margin_mm, band) / step)) + 1 for step in sampling]
    start = [max(0, int(a) - r) for a, r in zip(found.min(axis=0), reach, strict=True)]
    stop = [min(n, int(b) + 1 + r) for n, b, r in zip(mask.shape, found.max(axis=0), reach, strict=True)]
    crop = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    full_shape = mask.shape
    mask, entropy = mask[crop], entropy[crop]
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    neighbourhood = outside <= margin_mm
    weights = np.where(neighbourhood, np.clip(entropy, 0.0, None), 0.0).astype(np.float64)
    total = float(weights.sum())
    if total <= 0.0:
        return {}
    boundary = np.where(mask, inside <= band, outside <= band)
    box = np.argwhere(neighbourhood)
    lo, hi = box.min(axis=0), box.max(axis=0) + 1
    superior, middle, inferior = _thirds(weights, 0, int(lo[0]), int(hi[0]))
    right, centre, left = _thirds(weights, mask.ndim - 1, int(lo[-1]), int(hi[-1]))
    edge = np.zeros(mask.shape, dtype=bool)
    for axis, step in enumerate(sampling):
        width = max(1, int(np.ceil(field_edge_mm / step)))
        position = np.arange(start[axis], stop[axis])
        near = (position < width) | (position >= full_shape[axis] - width)
        shape = [1] * mask.ndim
        shape[axis] = near.size
        edge |= near.reshape(shape)
    shares = {
        "boundary": float(weights[boundary].sum()) / total,
        "superior": superior,
        "middle": middle,
        "inferior": inferior,
        "left": left,
        "centre": centre,
        "right": right,
        "field_edge": float(weights[edge].sum()) / total,
    }
    return {k: round(min(1.0, max(0.0, shares[k])), 4) for k in REGION_KEYS}


def region_shares(
    entropy: np.ndarray, labels: np.ndarray, spacing: Sequence[float], n_labels: int, **kwargs: float
) -> dict[int, dict[str, float]]:
    """:func:`structure_regions` for every label value ``1..n_labels`` of the label map ``labels``."""
    return {value: structure_regions(entropy, labels == value, spacing, **kwargs) for value in range(1, n_labels + 1)}
