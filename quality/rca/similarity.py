"""Choosing the references most similar to a case: correlation of centred thumbnails."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from quality.rca.registration import shrink_factors
from quality.rca.settings import RcaSettings

if TYPE_CHECKING:
    from quality.rca.bank import Reference, ReferenceBank


def block_mean(image: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Means over blocks of ``factors`` voxels (per axis), the image zero-padded to a multiple of them."""
    if all(f == 1 for f in factors):
        return image.astype(np.float32)
    padded = np.pad(image.astype(np.float32), [(0, (-n) % f) for n, f in zip(image.shape, factors, strict=True)])
    shape: list[int] = []
    for n, f in zip(padded.shape, factors, strict=True):
        shape += [n // f, f]
    return padded.reshape(shape).mean(axis=tuple(range(1, 2 * image.ndim, 2)))


def _centred(thumb: np.ndarray, box: tuple[int, ...]) -> np.ndarray:
    """``thumb`` placed in a zero box of shape ``box`` with its intensity centre of mass at the box centre."""
    total = float(thumb.sum())
    com = np.array(ndimage.center_of_mass(thumb)) if total > 0 else (np.array(thumb.shape) - 1) / 2
    # output index o samples thumb at o + shift, so the box centre lands on the centre of mass
    shift = com - (np.array(box) - 1) / 2
    return ndimage.affine_transform(thumb, np.ones(thumb.ndim), offset=shift, output_shape=box, order=1, cval=0.0)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else 0.0


def most_similar(image: np.ndarray, bank: ReferenceBank, k: int, settings: RcaSettings) -> list[Reference]:
    """The ``k`` references whose centred thumbnails correlate best with the case's (or, when
    ``settings.mirror_axis`` is set, with the case's mirror image), most similar first."""
    axis = settings.mirror_axis
    case = block_mean(image, shrink_factors(settings.thumbnail_mm, bank.spacing))
    thumbs = [bank._thumbnail(r, settings.local_contrast_mm, settings.thumbnail_mm) for r in bank.references]
    box = tuple(max(t.shape[d] for t in [case, *thumbs]) for d in range(image.ndim))
    views = [_centred(case, box)] + ([] if axis is None else [_centred(np.flip(case, axis), box)])
    scores = [max(_ncc(view, _centred(t, box)) for view in views) for t in thumbs]
    order = np.argsort(-np.array(scores), kind="stable")[:k]
    return [bank.references[int(i)] for i in order]
