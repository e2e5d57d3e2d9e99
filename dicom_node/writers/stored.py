"""Stored values of the quality maps: probabilities and entropy (floats) as the integers their objects hold.

- :func:`store_probabilities`: the PROBABILITY SEG's ``round(255 p)`` (uint8) of each structure;
- :func:`store_entropy`: the entropy map's ``round(65535 h / log2(classes))`` (uint16), certain voxels 0.

Each checks the range of what it is given and writes into an array of the caller's, so that a caller that
has the floats one block of slices at a time (:func:`fairnode.source_maps.stored_source_maps`) never holds
them for the whole volume: the same stored values as from the whole array, in one pass.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from dicom_node.writers.common import RANGE_TOLERANCE, frame_blocks

#: Largest stored value of the PROBABILITY SEG: probability p is stored as round(255 p).
MAX_FRACTIONAL_VALUE: Final = 255
#: Largest stored value of the entropy map: entropy h is stored as round(65535 h / log2(classes)).
MAX_ENTROPY_VALUE: Final = 65535
#: Entropy under this (bits) is written as 0: the network is certain there, and the noise of near-zero
#: values would otherwise keep the lossless compression from working.
ENTROPY_FLOOR_BITS: Final = 0.01


def store_probabilities(probabilities: np.ndarray, out: np.ndarray) -> None:
    """Write ``round(255 p)`` of ``probabilities`` into ``out``.

    Parameters
    ----------
    probabilities
        float ``(segments, frames, rows, columns)``: the foreground probabilities, each in [0, 1] within
        :data:`~dicom_node.writers.common.RANGE_TOLERANCE` (the rounding errors within it are clipped).
    out
        uint8 of the same shape (or a view of a larger array, e.g. some of its frames).

    Raises
    ------
    ValueError
        If ``probabilities`` is not floating point or holds a value outside [0, 1] (or NaN).
    """
    if not np.issubdtype(probabilities.dtype, np.floating):
        raise ValueError(f"mean_probabilities must be a float array, got dtype {probabilities.dtype}")
    for k, segment in enumerate(probabilities):
        lo, hi = float(segment.min()), float(segment.max())  # NaN propagates and fails the check
        if not (lo >= -RANGE_TOLERANCE and hi <= 1 + RANGE_TOLERANCE):
            raise ValueError(f"mean_probabilities must lie in [0, 1], got values from {lo} to {hi}")
        for block in frame_blocks(segment):  # a float copy of one block of frames at a time
            # as highdicom quantises a float frame: around(p * max) in the array's precision (np.around to 0
            # decimals is np.rint). No clipping is needed: within the tolerance checked above, p * max lies in
            # [-0.03, max + 0.03] and rounds to -0, 0 .. max (-0 is stored as 0)
            scaled = np.multiply(segment[block], np.float32(MAX_FRACTIONAL_VALUE), dtype=np.float32)
            np.rint(scaled, out=scaled)
            out[k, block] = scaled


def store_entropy(entropy: np.ndarray, classes: int, out: np.ndarray) -> None:
    """Write ``round(65535 h / log2(classes))`` of ``entropy`` into ``out``, entropy under
    :data:`ENTROPY_FLOOR_BITS` as 0.

    Parameters
    ----------
    entropy
        float ``(frames, rows, columns)``, bits, in ``[0, log2(classes)]`` within the range tolerance.
    classes
        the classes of the model (background included).
    out
        uint16 of the same shape (or a view of a larger array).

    Raises
    ------
    ValueError
        If ``entropy`` is not floating point or holds a value outside ``[0, log2(classes)]`` (or NaN).
    """
    if not np.issubdtype(entropy.dtype, np.floating):
        raise ValueError(f"entropy must be a float array (bits), got dtype {entropy.dtype}")
    max_bits = math.log2(classes)
    lo, hi = float(entropy.min()), float(entropy.max())
    if not (lo >= -RANGE_TOLERANCE and hi <= max_bits + RANGE_TOLERANCE):
        raise ValueError(
            f"entropy must lie in [0, {max_bits:.4f}] bits (log2 of {classes} classes), got values from {lo} to {hi}"
        )
    step = max_bits / MAX_ENTROPY_VALUE
    for block in frame_blocks(entropy):  # a float copy of one block of frames at a time, changed in place
        values = np.minimum(entropy[block], max_bits)
        # certain voxels (and those a rounding error below 0) are 0: runs of zeros compress (38 MB -> a few MB)
        np.copyto(values, 0.0, where=values < ENTROPY_FLOOR_BITS)
        np.divide(values, step, out=values)
        np.rint(values, out=values)
        out[block] = values
