"""The quality maps (mean probabilities, entropy) from the model grid to the source grid, for the outputs.

:func:`maps_to_source` gives them as floats; :func:`stored_source_maps` as the stored values of the
PROBABILITY SEG and the entropy map (:mod:`dicom_node.writers.stored`), resampled and quantised a few slices at
a time: the float maps of a 128-slice CT (7 x 128 x 512 x 512 float32, 0.9 GB) are never held, and the memory
they took, touched for the first time on every study, cost more than the resampling itself.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import torch
from torch.nn.functional import interpolate

from dicom_node.writers.stored import store_entropy, store_probabilities
from quality.types import UncertaintyMaps

#: Source slices resampled in-plane and quantised at a time by :func:`stored_source_maps` (about 15 MB of floats
#: for 7 maps of 512 x 512).
SLICES_PER_BLOCK: Final = 2


def _stacked(maps: UncertaintyMaps, first_class: int = 0) -> torch.Tensor:
    """Mean probabilities of the classes from ``first_class`` on and the entropy in one float32 tensor
    ``(classes - first_class + 1, *model grid)``, entropy last."""
    channels = [maps.mean_probabilities[first_class:], maps.entropy[None]]
    return torch.from_numpy(np.concatenate(channels, axis=0, dtype=np.float32))


def _along_slices(stacked: torch.Tensor, slices: int) -> torch.Tensor:
    """``stacked`` ``(channels, depth, rows, columns)`` resampled linearly along the first spatial axis to
    ``slices`` (the coarse in-plane grid kept): the first of the two separable passes."""
    _, _, rows, columns = stacked.shape
    return interpolate(stacked[None], size=(slices, rows, columns), mode="trilinear", align_corners=False)[0]


def _in_plane(planes: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``planes`` ``(a, b, rows, columns)`` (channels and slices, in either order) resampled bilinearly in-plane
    to ``shape``: ``(a, b, *shape)``."""
    a, b, rows, columns = planes.shape
    flat = planes.reshape(1, a * b, rows, columns)
    return interpolate(flat, size=shape, mode="bilinear", align_corners=False).reshape(a, b, *shape)


def _image(stacked: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``stacked`` ``(channels, rows, columns)`` of one 2D image resampled bilinearly to ``shape``."""
    return interpolate(stacked[None], size=shape, mode="bilinear", align_corners=False)[0]


def maps_to_source(maps: UncertaintyMaps, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The mean probabilities ``(classes, *shape)`` and the entropy ``shape`` of ``maps`` on the source grid.

    Both are resampled together, linearly as :func:`~inference.preprocess.probabilities_to_source` resamples
    each, and returned as views of one result. A volume is resampled separably: first along the slices on the
    coarse in-plane grid, then each slice in-plane; the same trilinear values (to float32 rounding, under 1e-6)
    in half the time of one trilinear pass.
    """
    stacked = _stacked(maps)
    with torch.no_grad():
        if stacked.ndim == 3:
            out = _image(stacked, shape)
        else:
            out = _in_plane(_along_slices(stacked, shape[0]), (shape[1], shape[2]))
    result = out.numpy()
    return result[:-1], result[-1]


def stored_source_maps(maps: UncertaintyMaps, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The stored values of :func:`maps_to_source`'s maps, for the PROBABILITY SEG and the entropy map.

    Returns
    -------
    probabilities
        uint8 ``(classes - 1, frames, rows, columns)``: ``round(255 p)`` of each foreground class
        (:func:`~dicom_node.writers.stored.store_probabilities`), ``frames`` 1 for a 2D image of ``shape``
        ``(rows, columns)``.
    entropy
        uint16 ``(frames, rows, columns)``: the stored entropy (:func:`~dicom_node.writers.stored.store_entropy`).

    The values are those of the whole float maps stored at once; each block of :data:`SLICES_PER_BLOCK` slices
    is resampled in-plane from the maps resampled along the slices and stored before the next, so only one
    block of floats exists at a time. The background class, which neither object stores, is not resampled (each
    channel is resampled on its own: the others' values do not change).

    Raises
    ------
    ValueError
        If a probability lies outside [0, 1] or an entropy outside [0, log2(classes)] (or is NaN).
    """
    stacked = _stacked(maps, first_class=1)  # the foreground classes, then the entropy
    classes = int(maps.mean_probabilities.shape[0])
    frames, rows, columns = (1, *shape) if len(shape) == 2 else shape
    probabilities = np.empty((classes - 1, frames, rows, columns), dtype=np.uint8)
    entropy = np.empty((frames, rows, columns), dtype=np.uint16)

    def store(values: np.ndarray, block: slice) -> None:
        store_probabilities(values[:-1], probabilities[:, block])
        store_entropy(values[-1], classes, entropy[block])

    with torch.no_grad():
        if stacked.ndim == 3:
            store(_image(stacked, shape)[:, None].numpy(), slice(0, 1))
        else:
            along = _along_slices(stacked, frames)
            for start in range(0, frames, SLICES_PER_BLOCK):
                block = slice(start, start + SLICES_PER_BLOCK)
                # the block's coarse planes (copied together by _in_plane's reshape, a few hundred kB) resampled
                # into maps (channels, slices, rows, columns), each channel one contiguous piece as stored
                store(_in_plane(along[:, block], (rows, columns)).numpy(), block)
    return probabilities, entropy
