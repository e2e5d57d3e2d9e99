"""Reproducible stochastic samples: the random generators of the samplers seeded from the study's own image.

MC-dropout draws its masks from the runtime's global generator (ONNX Runtime's, or torch's for models kept as
torch networks). Seeding it, right before the samples are drawn, with a number derived from the network input
gives the same samples, hence the same uncertainty, RCA-free features, predicted Dice and route, every time
the same image is analysed: a study re-sent, re-processed or validated again reads the same. The generators
are process-wide, so two studies sampled at the same moment in one process may still interleave their draws.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

logger = logging.getLogger(__name__)


def sample_seed(model_input: np.ndarray) -> int:
    """A 31-bit seed from the bytes (and shape) of the network input: the same image gives the same seed."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(repr(model_input.shape).encode())
    digest.update(np.ascontiguousarray(model_input, dtype=np.float32).tobytes())
    return int.from_bytes(digest.digest(), "big") % (2**31 - 1)


def seed_samplers(seed: int) -> None:
    """Seed the global generators MC-dropout draws from (ONNX Runtime, and torch when it is loaded)."""
    import sys

    import onnxruntime as ort

    ort.set_seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
    logger.debug("stochastic samplers seeded with %d", seed)
