"""The model-grid resampling agrees with MONAI's anti-aliased Resize, which it replaces for speed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Resize

from inference.preprocess import resize_anti_aliased


@pytest.mark.parametrize(
    ("shape", "out"),
    [
        ((1, 40, 64, 64), (30, 30, 30)),  # every axis shrinks
        ((1, 12, 64, 64), (20, 30, 30)),  # slices grow, rows and columns shrink (a CT on a 1.5 mm grid)
        ((3, 50, 70), (20, 90)),  # 2-D, several channels, one axis grows
        ((2, 10, 12, 14), (10, 12, 14)),  # same shape: a copy
        ((1, 9, 9, 9), (18, 18, 18)),  # only growing: no smoothing
    ],
)
def test_resize_matches_monai_anti_aliased_resize(shape: tuple[int, ...], out: tuple[int, ...]) -> None:
    x = np.random.default_rng(7).random(shape).astype(np.float32)
    mode = "trilinear" if len(out) == 3 else "bilinear"
    expected = np.asarray(Resize(out, mode=mode, anti_aliasing=True)(torch.from_numpy(x.copy())))
    got = resize_anti_aliased(x, out)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.shares_memory(got, x)

