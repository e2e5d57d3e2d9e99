"""Liver slices for the weakly supervised lesion model: the liver region, square crops, labels, truth.

The liver region is the organ model's liver, closed and filled slice by slice and grown by
:data:`REGION_GROW_MM`: lesions bulge out of the liver's outline and an organ model trained on lesion-free
livers leaves them out, so the region must reach beyond its liver. Every slice through the region is cut to
one square (the region's in-plane bounding box, shared by all slices of a volume) and resampled to
:data:`CROP` pixels; intensities are windowed to :data:`WINDOW_HU` and scaled to 0-1. The networks see the
square inside the liver region only (:func:`network_input`, in training, evaluation and the shipped model
alike): outside the liver, gallbladder, bowel fluid, vessels and kidneys look like hypo- or hyperdense lesions,
and a slice classifier cannot tell "inside the liver" by itself. The region reaches beyond the organ model's
liver (closed, filled, grown), so lesions that the organ model cuts out of its liver stay inside it.

Training sees :class:`SliceSet` only: images, image-level labels and where each slice came from. Lesion masks
live in :class:`LesionTruth`, which refuses to hand them out while :func:`no_truth_access` is active (all
training runs inside it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

#: side (pixels) of the square slice crops the networks see
CROP = 96
#: HU window mapped to 0-1
WINDOW_HU = (0.0, 200.0)
#: closing radius (mm) that bridges the organ model's notches around lesions
REGION_CLOSE_MM = 25.0
#: how far (mm) the liver region reaches beyond the closed liver
REGION_GROW_MM = 15.0
#: slice labels: a lesion of at least the labelled cross-section, none, a smaller one (not a training label)
LESION, NORMAL, UNLABELLED = 1, 0, -1


class MaskLeakError(RuntimeError):
    """A lesion mask was read while training was running."""


_guard = threading.local()


@contextlib.contextmanager
def no_truth_access() -> Iterator[None]:
    """While active (in this thread), :meth:`LesionTruth.masks` raises :class:`MaskLeakError`."""
    depth = getattr(_guard, "depth", 0)
    _guard.depth = depth + 1
    try:
        yield
    finally:
        _guard.depth = depth


def truth_locked() -> bool:
    """Whether :func:`no_truth_access` is active in this thread."""
    return getattr(_guard, "depth", 0) > 0


def liver_region(liver: np.ndarray, pixel_mm: float) -> np.ndarray:
    """The region where lesions are looked for: ``liver`` (boolean ``(slices, rows, cols)``) closed by
    :data:`REGION_CLOSE_MM`, holes filled and grown by :data:`REGION_GROW_MM`, slice by slice."""
    close_px = max(1, round(REGION_CLOSE_MM / pixel_mm))
    grow_px = max(1, round(REGION_GROW_MM / pixel_mm))
    out = np.zeros_like(liver, dtype=bool)
    ks = np.flatnonzero(liver.any(axis=(1, 2)))
    if ks.size == 0:
        return out
    rows = np.flatnonzero(liver.any(axis=(0, 2)))
    cols = np.flatnonzero(liver.any(axis=(0, 1)))
    m = close_px + grow_px + 2  # work inside the liver's bounding box and this margin only
    ny, nx = liver.shape[1:]
    y0, y1 = max(rows[0] - m, 0), min(rows[-1] + m + 1, ny)
    x0, x1 = max(cols[0] - m, 0), min(cols[-1] + m + 1, nx)
    for k in ks:
        plane = np.pad(liver[k, y0:y1, x0:x1], m)
        # morphology by distance transforms (a disk of any radius at the cost of one transform)
        dilated = ndimage.distance_transform_edt(~plane) <= close_px
        closed = ndimage.distance_transform_edt(dilated) > close_px
        filled = ndimage.binary_fill_holes(closed | plane)
        grown = ndimage.distance_transform_edt(~filled) <= grow_px
        py0, px0 = y0 - m, x0 - m  # where the padded plane starts in the slice
        sy0, sx0 = max(py0, 0), max(px0, 0)
        sy1, sx1 = min(py0 + grown.shape[0], ny), min(px0 + grown.shape[1], nx)
        out[k, sy0:sy1, sx0:sx1] = grown[sy0 - py0 : sy1 - py0, sx0 - px0 : sx1 - px0]
    return out


@dataclass(frozen=True)
class CropBox:
    """Where a volume's crops come from: slice indices, the square's top-left ``(row, col)`` and side
    (source pixels, may reach outside the image), and the source pixel size (mm) and slice spacing (mm)."""

    slices: tuple[int, ...]
    top: int
    left: int
    side: int
    pixel_mm: float
    slice_mm: float

    @property
    def crop_pixel_mm(self) -> float:
        return self.side * self.pixel_mm / CROP

    def overlap(self, rows: int, cols: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """Where the square and an image of ``rows`` x ``cols`` overlap: the image's (rows, cols) slices and the
        square's (the square may reach outside the image)."""
        y0, x0 = max(self.top, 0), max(self.left, 0)
        y1, x1 = min(self.top + self.side, rows), min(self.left + self.side, cols)
        square = (slice(y0 - self.top, y1 - self.top), slice(x0 - self.left, x1 - self.left))
        return (slice(y0, y1), slice(x0, x1)), square

    @property
    def voxel_ml(self) -> float:
        """Volume (ml) of one crop voxel."""
        return self.crop_pixel_mm**2 * self.slice_mm / 1000.0


def crop_box(region: np.ndarray, spacing: tuple[float, ...]) -> CropBox | None:
    """The square around ``region`` (all its slices), 5% margin; ``None`` when the region is empty."""
    ks = np.flatnonzero(region.any(axis=(1, 2)))
    if ks.size == 0:
        return None
    rows = np.flatnonzero(region.any(axis=(0, 2)))
    cols = np.flatnonzero(region.any(axis=(0, 1)))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    side = int(np.ceil(max(h, w) * 1.05))
    top = int((rows[0] + rows[-1]) // 2 - side // 2)
    left = int((cols[0] + cols[-1]) // 2 - side // 2)
    return CropBox(tuple(int(k) for k in ks), top, left, side, float(spacing[1]), float(spacing[0]))


def _cut(plane: np.ndarray, box: CropBox, fill: float) -> np.ndarray:
    out = np.full((box.side, box.side), fill, plane.dtype)
    image, square = box.overlap(*plane.shape)
    out[square] = plane[image]
    return out


def cut(volume: np.ndarray, box: CropBox, fill: float = 0.0, order: int = 1) -> np.ndarray:
    """``(len(box.slices), CROP, CROP)`` crops of ``volume``, resampled (``order`` 0 for masks)."""
    zoom = CROP / box.side
    out = np.empty((len(box.slices), CROP, CROP), np.float32)
    for i, k in enumerate(box.slices):
        square = _cut(volume[k].astype(np.float32), box, fill)
        out[i] = ndimage.zoom(square, zoom, order=order, mode="nearest", grid_mode=True)[:CROP, :CROP]
    return out


def paste(crops: np.ndarray, box: CropBox, shape: tuple[int, int, int]) -> np.ndarray:
    """Boolean crops ``(n, CROP, CROP)`` back onto a ``shape`` volume (nearest neighbour)."""
    out = np.zeros(shape, bool)
    idx = np.clip(((np.arange(box.side) + 0.5) * CROP / box.side).astype(int), 0, CROP - 1)
    image, square = box.overlap(*shape[1:])
    for i, k in enumerate(box.slices):
        out[(k, *image)] = crops[i][np.ix_(idx, idx)][square]
    return out


def add_crops(out: np.ndarray, crops: np.ndarray, box: CropBox, where: np.ndarray) -> None:
    """Add float crops ``(n, CROP, CROP)`` onto the volume ``out`` where the boolean volume ``where`` holds
    (in place; linear interpolation back from the crop grid): the inverse of :func:`cut` for values such as
    the counterfactual's change. Only the box's slices, rows and columns are touched."""
    image, square = box.overlap(*out.shape[1:])
    for i, k in enumerate(box.slices):
        full = ndimage.zoom(crops[i].astype(np.float32), box.side / CROP, order=1, mode="nearest", grid_mode=True)
        full = np.pad(full, ((0, max(0, box.side - full.shape[0])), (0, max(0, box.side - full.shape[1]))), "edge")
        out[(k, *image)] += np.where(where[(k, *image)], full[square], np.float32(0.0))


def normalise(hu: np.ndarray) -> np.ndarray:
    """HU to 0-1 over :data:`WINDOW_HU`."""
    lo, hi = WINDOW_HU
    return np.clip((hu - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def network_input(crops_hu: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """What the networks see: HU crops ``(n, CROP, CROP)`` normalised (:func:`normalise`) and set to 0 outside
    the liver region ``regions`` (boolean, same shape); ``(n, 1, CROP, CROP)`` float32."""
    if crops_hu.shape != regions.shape:
        raise ValueError(f"crops {crops_hu.shape} and regions {regions.shape} must have the same shape")
    return (normalise(crops_hu) * regions)[:, None].astype(np.float32)


@dataclass
class SliceSet:
    """What training sees: ``images`` ``(n, 1, CROP, CROP)`` float32 0-1 (:func:`network_input`), image-level
    ``labels`` ``(n,)`` (:data:`LESION` a lesion of at least the labelled cross-section in the slice,
    :data:`NORMAL` none, :data:`UNLABELLED` a smaller one: left out of training, kept for evaluation),
    ``regions`` ``(n, CROP, CROP)`` bool (the liver region), ``subject`` and ``slice_index`` of each slice.
    No lesion mask."""

    images: np.ndarray
    labels: np.ndarray
    regions: np.ndarray
    subject: np.ndarray
    slice_index: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def labelled(self) -> SliceSet:
        """The slices with a training label (:data:`LESION` or :data:`NORMAL`)."""
        return self.subset(self.labels != UNLABELLED)

    def subset(self, keep: np.ndarray) -> SliceSet:
        return SliceSet(
            self.images[keep], self.labels[keep], self.regions[keep], self.subject[keep], self.slice_index[keep]
        )

    @staticmethod
    def concatenate(parts: list[SliceSet]) -> SliceSet:
        return SliceSet(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("images", "labels", "regions", "subject", "slice_index")
            )
        )


class LesionTruth:
    """Lesion masks ``(n, CROP, CROP)`` aligned with a :class:`SliceSet`, for evaluation only.

    :meth:`masks` raises :class:`MaskLeakError` while :func:`no_truth_access` is active.
    """

    def __init__(self, masks: np.ndarray):
        self._masks = masks.astype(bool)

    def masks(self) -> np.ndarray:
        if truth_locked():
            raise MaskLeakError("lesion masks were read during training; training may use image-level labels only")
        return self._masks
