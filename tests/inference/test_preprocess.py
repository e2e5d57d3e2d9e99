"""The model-grid resampling agrees with MONAI's anti-aliased Resize, which it replaces for speed; the source-grid
labels are the argmax of the source-grid probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Resize, ScaleIntensityRange

from inference.model_card import InputSpec, IntensitySpec
from inference.preprocess import (
    _class_to_source,
    labels_to_source,
    normalise,
    probabilities_to_source,
    resize_anti_aliased,
    to_model_grid,
)


@pytest.mark.parametrize(
    ("shape", "out"),
    [
        ((1, 40, 64, 64), (30, 30, 30)),  # every axis shrinks
        ((1, 12, 64, 64), (20, 30, 30)),  # slices grow, rows and columns shrink (a CT on a 1.5 mm grid)
        ((3, 50, 70), (20, 90)),  # 2-D, several channels, one axis grows
        ((2, 10, 12, 14), (10, 12, 14)),  # same shape: a copy
        ((1, 9, 9, 9), (18, 18, 18)),  # only growing: no smoothing
        ((1, 3, 40, 40), (1, 20, 20)),  # three slices to one
        ((2, 5, 7, 9), (1, 1, 1)),  # every axis to a single voxel
        ((1, 100, 3), (13, 3)),  # one axis shrinks by more than 7, the other is kept
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


@pytest.mark.parametrize(
    ("grid", "source"),
    [
        ((6, 9, 13, 13), (20, 40, 40)),  # a CT: every axis grows
        ((4, 12, 10), (30, 25)),  # a radiograph
        ((3, 8, 8, 8), (6, 5, 12)),  # axes that shrink and grow
        ((4, 12, 10), (12, 10)),  # the source already on the model grid (no resampling)
        ((3, 5, 6, 7), (5, 6, 7)),
    ],
)
def test_labels_to_source_are_the_argmax_of_the_resampled_probabilities(
    grid: tuple[int, ...], source: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=grid).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    # ties: two classes equal over a block (the lower class wins, as np.argmax)
    probs[2, : grid[1] // 2] = probs[1, : grid[1] // 2]
    expected = np.argmax(probabilities_to_source(probs, source), axis=0)
    before = probs.copy()
    got = labels_to_source(probs, source)
    np.testing.assert_array_equal(probs, before)  # the caller's probabilities are untouched
    assert got.dtype == np.uint8
    assert got.shape == source
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(got)) == set(range(grid[0]))  # every class is the argmax somewhere: not a trivial map


def test_labels_to_source_refuses_more_classes_than_uint8_holds() -> None:
    with pytest.raises(ValueError, match="256 classes"):
        labels_to_source(np.zeros((257, 2, 2), dtype=np.float32), (4, 4))


@pytest.mark.parametrize(
    ("grid", "source"),
    [((9, 13, 13), (20, 40, 40)), ((12, 10), (30, 25)), ((8, 8, 8), (6, 5, 12)), ((5, 6, 7), (5, 6, 7))],
)
def test_one_class_resampled_into_an_array_has_the_values_of_probabilities_to_source(
    grid: tuple[int, ...], source: tuple[int, ...]
) -> None:
    probs = np.random.default_rng(5).random((1, *grid), dtype=np.float32)
    out = np.full(source, np.nan, dtype=np.float32)
    _class_to_source(probs, out)
    np.testing.assert_array_equal(out, probabilities_to_source(probs, source)[0])  # bit for bit, every voxel set


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_model_grid_image_leaves_the_source_untouched_and_matches_the_smoothing_of_a_copy(dtype: type) -> None:
    spec = InputSpec(
        modality="CT",
        spatial_dims=3,
        spacing_mm=(2.0, 1.5, 1.5),
        patch_size=(16, 16, 16),
        intensity=IntensitySpec(mode="window", low=-100.0, high=200.0),
    )
    image: np.ndarray = (np.random.default_rng(2).random((30, 48, 48)) * 600 - 200).astype(dtype)
    before = image.copy()
    got = to_model_grid(image, (1.0, 0.7, 0.7), spec)
    np.testing.assert_array_equal(image, before)
    expected = resize_anti_aliased(normalise(before, spec)[None], (15, 22, 22))  # nothing overwritten
    assert got.shape == (1, 15, 22, 22)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_window_is_monais_scale_intensity_range_bit_for_bit(dtype: type) -> None:
    spec = InputSpec(
        modality="CT",
        spatial_dims=3,
        spacing_mm=(2.0, 1.5, 1.5),
        patch_size=(16, 16, 16),
        intensity=IntensitySpec(mode="window", low=-250.0, high=350.0),
    )
    image: np.ndarray = (np.random.default_rng(6).random((7, 33, 35)) * 2000 - 1000).astype(dtype)
    before = image.copy()
    got = normalise(image, spec)
    expected = np.asarray(ScaleIntensityRange(-250.0, 350.0, 0.0, 1.0, clip=True)(image[None].astype(np.float32)))[0]
    np.testing.assert_array_equal(image, before)
    assert got.dtype == np.float32 and not np.shares_memory(got, image)
    np.testing.assert_array_equal(got, expected)
    assert got.min() == 0.0 and got.max() == 1.0 and 0.0 < np.median(got) < 1.0  # clipped at both ends
