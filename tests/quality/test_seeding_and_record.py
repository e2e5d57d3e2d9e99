"""Reproducible MC samples per image, and the calibrated RCA carried into ``Case.quality`` and the worklist."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fairness_registry.crud.quality import _structure_scores
from fairness_registry.models import QUALITY_KEYS, WorklistStructure
from inference.backends import InferenceSettings
from inference.model_card import bundled_models
from inference.model_store import open_segmenter
from quality.seeding import sample_seed, seed_samplers
from tests.fairness_registry.quality_samples import structure


def test_the_same_image_gives_the_same_mc_samples_and_another_image_others() -> None:
    folder = bundled_models()["xr-knee"]
    segmenter = open_segmenter(folder, prefer_gpu=False, inference=InferenceSettings(ort_threads=1))
    x = np.random.default_rng(0).random((1, 128, 128)).astype(np.float32)
    y = x.copy()
    y[0, 0, 0] += 0.5
    assert sample_seed(x) == sample_seed(x.copy()) != sample_seed(y)
    runs = []
    for image in (x, x, y):
        seed_samplers(sample_seed(image))
        runs.append(segmenter.samples(image, 2))
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0][0], runs[0][1])  # the two samples still differ from each other
    assert not np.array_equal(runs[0], runs[2])


def test_case_quality_and_worklist_carry_the_calibrated_rca() -> None:
    raw = structure("liver", 1)
    assert raw.rca is not None
    calibrated = replace(raw, rca=replace(raw.rca, calibrated_dice=0.93))
    scores = _structure_scores(calibrated)
    assert tuple(scores) == QUALITY_KEYS
    assert (scores["rca_max_dice"], scores["rca_calibrated_dice"]) == (0.89, 0.93)
    assert _structure_scores(raw)["rca_calibrated_dice"] is None  # raw stays marked raw
    shown = WorklistStructure.model_validate({"name": "liver", **scores})
    assert shown.rca_calibrated_dice == 0.93 and shown.rca_max_dice == 0.89
