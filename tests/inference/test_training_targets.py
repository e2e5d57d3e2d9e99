"""Training targets on a coarser model grid: partial-volume class fractions against nearest labels."""

from __future__ import annotations

import numpy as np
import torch

from cohorts.subjects import draw_subject
from inference.model_card import InputSpec, IntensitySpec
from inference.preprocess import label_fractions_to_model_grid, labels_to_model_grid, probabilities_to_source
from inference.training import Example, _targets, sample_patch

SPEC = InputSpec(
    modality="MR",
    spatial_dims=3,
    spacing_mm=(1.5, 1.5, 1.5),
    patch_size=(16, 16, 16),
    intensity=IntensitySpec(mode="percentile", low=1.0, high=99.0),
)
SPACING = (1.05, 1.05, 1.05)


def _layers() -> np.ndarray:
    """40³ voxels of 1.05 mm: background, then layers 2 voxels thick of classes 1, 2 and 3 along the rows (as
    thin as the sulcal CSF of a brain), repeating."""
    labels = np.zeros((40, 40, 40), np.uint8)
    rows = np.arange(40)
    labels[:, 4:36, 4:36] = (1 + (rows[4:36] // 2) % 3)[:, None]
    return labels


def _dice(a: np.ndarray, b: np.ndarray, c: int) -> float:
    return 2.0 * float(((a == c) & (b == c)).sum()) / float((a == c).sum() + (b == c).sum())


def test_fractions_sum_to_one_and_keep_thin_layers_that_nearest_labels_alias() -> None:
    labels = _layers()
    fractions = label_fractions_to_model_grid(labels, SPACING, SPEC, 4)
    near = labels_to_model_grid(labels, SPACING, SPEC)[0]
    assert fractions.shape == (4, *near.shape) and fractions.dtype == np.float32
    np.testing.assert_allclose(fractions.sum(axis=0), 1.0, atol=1e-4)
    soft_back = np.argmax(probabilities_to_source(fractions, labels.shape), axis=0)
    onehot = np.stack([near == c for c in range(4)]).astype(np.float32)
    near_back = np.argmax(probabilities_to_source(onehot, labels.shape), axis=0)
    for c in (1, 2, 3):
        assert _dice(soft_back, labels, c) > _dice(near_back, labels, c) + 0.1, c


def test_a_patch_of_fractions_is_background_beyond_the_image() -> None:
    labels = _layers()[:20, :20, :12]  # smaller than the patch along the columns
    ex = Example(
        subject=draw_subject("mr-brain", 0, 1),
        image=np.ones((1, *labels.shape), np.float32),
        labels=labels[None],
        fractions=label_fractions_to_model_grid(labels, (1.5, 1.5, 1.5), SPEC, 4).astype(np.float16),
    )
    img, target = sample_patch(ex, (16, 16, 16), np.random.default_rng(0), 1.0)
    assert img.shape == (1, 16, 16, 16) and target.shape == (4, 16, 16, 16) and target.dtype == np.float32
    assert (target[0, :, :, 12:] == 1.0).all() and (target[1:, :, :, 12:] == 0.0).all()
    np.testing.assert_allclose(target.sum(axis=0), 1.0, atol=2e-3)
    y = _targets([target, target])
    assert y.dtype == torch.float32 and tuple(y.shape) == (2, 4, 16, 16, 16)
    without = Example(subject=ex.subject, image=ex.image, labels=ex.labels)
    _, lab = sample_patch(without, (16, 16, 16), np.random.default_rng(0), 1.0)
    assert lab.shape == (1, 16, 16, 16) and lab.dtype == np.uint8 and (lab[0, :, :, 12:] == 0).all()
    assert _targets([lab]).dtype == torch.int64
