"""Weakly supervised lesion model: tiny training converges, mask thresholds, no lesion mask in training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from inference.weak import cohort, masks, training
from inference.weak.model import counterfactuals, probabilities
from inference.weak.shipped import LesionResult, counterfactual_image
from inference.weak.slices import (
    CROP,
    UNLABELLED,
    WINDOW_HU,
    LesionTruth,
    MaskLeakError,
    SliceSet,
    add_crops,
    crop_box,
    cut,
    liver_region,
    network_input,
    no_truth_access,
)


def _toy(n: int, seed: int) -> tuple[SliceSet, LesionTruth]:
    """Grey discs ('livers') on black, half of them with a dark spot ('lesion') of radius 6-12 px."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:CROP, 0:CROP]
    images = np.zeros((n, 1, CROP, CROP), np.float32)
    truth = np.zeros((n, CROP, CROP), bool)
    liver = (yy - 48) ** 2 + (xx - 48) ** 2 < 40**2
    labels = np.arange(n) % 2
    for i in range(n):
        images[i, 0] = np.where(liver, 0.55, 0.05) + rng.normal(0, 0.02, (CROP, CROP))
        if labels[i]:
            r = rng.uniform(6, 12)
            cy, cx = rng.uniform(30, 66, size=2)
            spot = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            images[i, 0][spot] = 0.15 + rng.normal(0, 0.02, int(spot.sum()))
            truth[i] = spot
    regions = np.repeat(liver[None], n, axis=0)
    data = SliceSet(images, labels.astype(np.int64), regions, np.arange(n), np.zeros(n, np.int64))
    return data, LesionTruth(truth)


def test_tiny_training_converges_and_inpaints_the_lesion() -> None:
    torch.manual_seed(0)
    data, truth = _toy(32, 0)
    clf, hist = training.train_classifier(data, steps=30, batch=16, lr=2e-3)
    p = probabilities(clf, data.images)
    assert np.mean(hist.loss[-2:]) < 0.5 * hist.loss[0], hist.loss
    assert ((p >= 0.5) == (data.labels == 1)).mean() >= 0.9
    weights = training.CoinWeights(close=1.0, smooth=3.0, identity=5.0)  # a stronger push for so few steps
    gen, ghist = training.train_generator(data, clf, steps=60, batch=8, lr=2e-3, weights=weights)
    assert np.mean(ghist.loss[-2:]) < ghist.loss[0], ghist.loss
    change = np.abs(data.images - counterfactuals(gen, data.images))[:, 0]
    m = truth.masks()
    lesion = data.labels == 1
    # the counterfactual changes the lesion more than the rest of the liver, and lesion slices more than normal ones
    assert change[lesion][m[lesion]].mean() > 1.5 * change[lesion][~m[lesion] & data.regions[lesion]].mean()
    assert change[lesion].mean() > change[~lesion].mean()


def test_training_never_reads_lesion_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    data, truth = _toy(8, 1)
    # the guard: masks cannot be read while training runs
    with no_truth_access(), pytest.raises(MaskLeakError):
        truth.masks()
    assert truth.masks().shape == (8, CROP, CROP)  # outside training they can
    # what training receives has no mask; a read during training would raise through the guard
    assert {f.name for f in dataclasses.fields(SliceSet)} == {"images", "labels", "regions", "subject", "slice_index"}
    calls: list[str] = []
    original = LesionTruth.masks

    def spy(self: LesionTruth) -> np.ndarray:
        calls.append("masks")
        return original(self)

    monkeypatch.setattr(LesionTruth, "masks", spy)
    clf, _ = training.train_classifier(data, steps=2, batch=4)
    training.train_generator(data, clf, steps=2, batch=4)
    assert calls == []


def test_slice_labels_leave_small_cross_sections_out_of_training(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = cohort.slice_labels(np.array([0.0, 10.0, 299.0, 300.0, 1200.0]), label_mm2=300.0)
    assert labels.tolist() == [0, UNLABELLED, UNLABELLED, 1, 1]
    data, _ = _toy(8, 2)
    data.labels[:2] = UNLABELLED
    seen: list[np.ndarray] = []
    original = training._balanced_batches

    def spy(labels: np.ndarray, *args: object) -> list[np.ndarray]:
        seen.append(labels.copy())
        return original(labels, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "_balanced_batches", spy)
    clf, _ = training.train_classifier(data, steps=2, batch=4)
    training.train_generator(data, clf, steps=2, batch=4)
    assert len(seen) >= 2 and all(len(s) == 6 and (s != UNLABELLED).all() for s in seen)


def test_network_input_is_the_window_inside_the_region() -> None:
    hu = np.full((2, CROP, CROP), 100.0, np.float32)
    hu[:, :10] = 300.0
    region = np.zeros((2, CROP, CROP), bool)
    region[:, :48] = True
    x = network_input(hu, region)
    assert x.shape == (2, 1, CROP, CROP) and x.dtype == np.float32
    assert np.allclose(x[:, 0, :10], 1.0) and np.allclose(x[:, 0, 10:48], 0.5) and not x[:, 0, 48:].any()


def test_threshold_region_gate_and_small_components() -> None:
    score = np.zeros((3, 10, 10), np.float32)
    score[0, 2:6, 2:6] = 0.4  # a 16-pixel blob
    score[0, 8, 8] = 0.9  # a single pixel: removed as too small
    score[1, 2:6, 2:6] = 0.4  # on a slice the classifier calls normal: gated out
    score[2, 0:4, 0:4] = 0.4  # half outside the region
    region = np.ones_like(score, bool)
    region[2, :, :2] = False
    p = np.array([0.9, 0.1, 0.8])
    m = masks.to_mask(score, 0.25, region, p, min_pixels=4)
    assert m[0].sum() == 16 and not m[0, 8, 8]
    assert not m[1].any()
    assert m[2].sum() == 8 and not m[2][:, :2].any()
    assert not masks.to_mask(score, 0.5, region, p, min_pixels=4).any()
    truth = np.zeros_like(region)
    truth[0, 2:6, 2:6] = True
    t, iou = masks.choose_threshold(score, region, truth, [0.1, 0.3, 0.5], p)
    assert iou == pytest.approx(16 / 24) and t == 0.1  # slice 2's blob stays a false positive below 0.4
    s = masks.score_subject(m, truth, voxel_ml=0.01)
    assert s.detected == 1 and s.lesions == 1 and s.false_positive_ml == pytest.approx(0.08)
    scaled = masks.scale_per_slice(np.array([[[-1.0, 2.0]], [[0.0, 0.0]]]))
    assert scaled.tolist() == [[[0.0, 1.0]], [[0.0, 0.0]]]


def test_shipped_lesion_card_matches_the_committed_benchmark() -> None:
    import json
    from pathlib import Path

    from inference.model_card import MODELS_DIR, bundled_models
    from inference.weak.shipped import NAME, load_lesion_card

    folder = MODELS_DIR / NAME
    if not (folder / "lesion-card.yaml").is_file():
        pytest.skip("lesion model not shipped")
    card = load_lesion_card(folder)
    assert card.supervision == "trained from image-level labels only"
    assert {"classifier.onnx", "classifier_mc.onnx", "generator.onnx"} <= {p.name for p in folder.iterdir()}
    assert NAME not in bundled_models()  # not an organ model: the organ model store does not list it
    root = Path(__file__).resolve().parents[2]
    result = json.loads((root / "benchmarks/results/coin.json").read_text(encoding="utf-8"))
    coin = result["methods"]["COIN"]
    assert card.threshold == coin["threshold"]
    assert card.validation["test_iou"] == pytest.approx(coin["all"]["iou"])
    assert card.validation["target_met"] == (coin["all"]["iou"] >= 0.6)


def test_add_crops_puts_crops_back_where_cut_took_them() -> None:
    # a smooth field cut to the crops of a region reaching past the image edge comes back where it was
    z, y, x = np.mgrid[0:3, 0:150, 0:120].astype(np.float32)
    field = 2.0 * y + 0.5 * x + 10.0 * z
    region = np.zeros(field.shape, bool)
    region[:, 20:149, 5:119] = True
    box = crop_box(region, (5.0, 1.0, 1.0))
    assert box is not None and box.side > CROP
    back = np.zeros(field.shape, np.float32)
    add_crops(back, cut(field, box), box, np.ones(field.shape, bool))
    inside = region.copy()
    inside[:, :, :8] = inside[:, :, -8:] = inside[:, -8:, :] = False  # interpolation at the crop's edges
    np.testing.assert_allclose(back[inside], field[inside], atol=1e-2)
    outside = np.ones(field.shape, bool)
    outside[:, box.top : box.top + box.side, max(box.left, 0) : box.left + box.side] = False
    assert (back[outside] == 0).all()
    # only where ``where`` holds
    where = np.zeros(field.shape, bool)
    where[1, 60:80, 30:50] = True
    masked = np.zeros(field.shape, np.float32)
    add_crops(masked, cut(field, box), box, where)
    assert (masked[~where] == 0).all() and np.allclose(masked[where], field[where], atol=1e-2)


def test_counterfactual_image_changes_the_liver_region_only_and_within_the_window() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-200.0, 400.0, (4, 120, 110)).astype(np.float32)
    liver = np.zeros(pixels.shape, bool)
    liver[1:3, 30:90, 20:80] = True
    region = liver_region(liver, 1.0)
    box = crop_box(region, (5.0, 1.0, 1.0))
    assert box is not None
    change = rng.normal(0.0, 30.0, (len(box.slices), CROP, CROP)).astype(np.float32)
    empty = np.zeros(pixels.shape, bool)
    result = LesionResult(empty, [], 0.5, 0.1, 1.0, "PASS", change_hu=change, box=box, region=region)
    cf = counterfactual_image(pixels, result)
    lo, hi = WINDOW_HU
    kept = ~region | (pixels < lo) | (pixels > hi)
    np.testing.assert_array_equal(cf[kept], pixels[kept])
    assert np.abs(cf[~kept] - pixels[~kept]).mean() > 5.0  # the change is there inside


def test_counterfactual_change_is_bounded_and_smooth() -> None:
    from inference.weak import nets

    torch.manual_seed(0)
    gen = nets.Counterfactual().eval()
    yy, xx = np.mgrid[0:CROP, 0:CROP]
    inside = (yy - 48) ** 2 + (xx - 48) ** 2 < 30**2
    x = torch.from_numpy(np.where(inside, 0.5, 0.0).astype(np.float32))[None, None].repeat(2, 1, 1, 1)
    assert torch.equal(gen(x), x)  # starts as the identity
    checker = torch.from_numpy(((yy + xx) % 2 * 2 - 1).astype(np.float32))[None, None]

    class Painter(torch.nn.Module):  # the largest change the head can ask for, as a 1-pixel checkerboard
        def __init__(self, pattern: torch.Tensor):
            super().__init__()
            self.pattern = pattern

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return 50.0 * self.pattern.expand(h.shape[0], 1, CROP, CROP)

    with torch.no_grad():
        gen.head = Painter(checker)
        change = (gen(x) - x)[:, 0].numpy()
        assert np.abs(change).max() < 0.05 * nets.RESIDUAL_MAX  # the pattern does not pass the smoothing
        gen.head = Painter(torch.ones(1, 1, CROP, CROP))  # a uniform fill does, up to the bound and the window
        cf = gen(x)[:, 0].numpy()
        core = (yy - 48) ** 2 + (xx - 48) ** 2 < 25**2
        assert np.allclose(cf[:, core], min(0.5 + nets.RESIDUAL_MAX, 1.0))
        away = ~inside
        away[:2] = away[-2:] = away[:, :2] = away[:, -2:] = False  # the smoothing's zero padding at the border
        assert np.allclose(cf[:, away], nets.RESIDUAL_MAX)  # outside the region is left to training and the mask
        assert cf.max() <= 1.0 and cf.min() >= 0.0
