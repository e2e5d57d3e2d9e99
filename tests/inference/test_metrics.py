"""inference.metrics: the stated empty-mask conventions, and the exact scores agree with MONAI's."""

from __future__ import annotations

import math

import numpy as np

from inference.metrics import dice, dice_per_label, hd95, monai_dice_per_label, monai_scores


def _ball(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return np.asarray(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2)


def test_empty_mask_conventions() -> None:
    empty = np.zeros((4, 5, 6), dtype=bool)
    full = empty.copy()
    full[1:3, 1:4, 2:5] = True
    assert dice(empty, empty) == 1.0
    assert math.isnan(dice(empty, empty, both_empty=float("nan")))
    assert dice(full, empty) == 0.0 and dice(empty, full) == 0.0
    assert math.isnan(hd95(full, empty, (1.0, 1.0, 1.0)))
    assert math.isnan(hd95(empty, empty, (1.0, 1.0, 1.0)))
    both, one = monai_scores(empty, empty, (1.0, 1.0, 1.0), 2.0), monai_scores(full, empty, (1.0, 1.0, 1.0), 2.0)
    assert both.dice == 1.0 and math.isnan(both.nsd) and math.isnan(both.hd95_mm)
    assert one.dice == 0.0 and one.nsd == 0.0 and math.isnan(one.hd95_mm)


def test_dice_per_label_matches_dice_of_each_label() -> None:
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 3, size=(6, 7, 8)).astype(np.uint8)
    truth = rng.integers(0, 3, size=(6, 7, 8)).astype(np.uint8)
    per_label = dice_per_label(pred, truth, 3)
    assert per_label.shape == (3,)
    assert per_label[:2].tolist() == [dice(pred == v, truth == v) for v in (1, 2)]
    assert per_label[2] == 1.0  # label 3 is in neither map
    assert math.isnan(dice_per_label(pred, truth, 3, both_empty=float("nan"))[2])


def test_exact_scores_agree_with_monai() -> None:
    shape, spacing = (20, 24, 24), (2.0, 0.8, 0.8)
    a = _ball(shape, (10, 12, 12), 6)
    b = _ball(shape, (11, 13, 11), 5)
    reference = monai_scores(a, b, spacing, 2.0)
    assert abs(dice(a, b) - reference.dice) < 1e-6
    assert 0 < reference.dice < 1 and 0 < reference.nsd <= 1
    assert abs(hd95(a, b, spacing) - reference.hd95_mm) < 1e-3


def test_validation_dice_leaves_out_a_label_absent_from_the_truth_and_matches_the_exact_dice() -> None:
    rng = np.random.default_rng(5)
    pred = rng.integers(0, 4, size=(6, 7, 8)).astype(np.uint8)
    truth = rng.integers(0, 3, size=(6, 7, 8)).astype(np.uint8)  # label 3 predicted, not in the truth
    scores = monai_dice_per_label(pred, truth, 4)
    assert scores.shape == (3,)
    assert np.allclose(scores[:2], [dice(pred == v, truth == v) for v in (1, 2)], atol=1e-6)
    assert math.isnan(scores[2])
