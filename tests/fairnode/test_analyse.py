"""fairnode.pipeline.analyse runs RCA and the source-grid labels beside the MC sampling: the quality and the labels
are those of computing them after the samples."""

from __future__ import annotations

import numpy as np

from cohorts import xr_knee
from cohorts.subjects import draw_subject
from fairnode.pipeline import QualitySettings, analyse
from inference.backends import InferenceSettings
from inference.model_card import bundled_models
from inference.model_store import open_segmenter
from inference.preprocess import labels_to_source, to_model_grid
from quality.assess import QualityModel, assess
from quality.seeding import sample_seed, seed_samplers
from quality.types import SamplingMethod


def test_rca_and_labels_beside_the_sampling_give_what_they_give_after_it() -> None:
    folder = bundled_models()["xr-knee"]
    segmenter = open_segmenter(folder, prefer_gpu=False, inference=InferenceSettings(ort_threads=1))
    qm = QualityModel.open(folder, segmenter.card)
    assert qm.bank is not None
    image = xr_knee.generate(draw_subject("xr-knee", 3, 7))
    spacing = tuple(float(s) for s in image.spacing)
    pixels = image.pixels.astype(np.float32)
    stages: dict[str, float] = {}
    beside = analyse(pixels, spacing, "DX", segmenter, qm, QualitySettings(), stages)
    assert beside.assessment is not None and beside.assessment.rca is not None
    assert {"sampling", "rca", "uncertainty", "predictor_gate"} <= set(stages)

    # the same case with RCA run inline after the samples, as assess does without a run handed to it
    x = to_model_grid(pixels, spacing, segmenter.card.input)
    grid_probs = segmenter.model_grid_probabilities(x)
    labels = np.argmax(grid_probs, axis=0).astype(np.uint8)
    np.testing.assert_array_equal(beside.labels, labels_to_source(grid_probs, pixels.shape))
    assert beside.labels.shape == pixels.shape and len(np.unique(beside.labels)) > 1
    seed_samplers(sample_seed(x))
    samples = segmenter.samples(x, segmenter.card.quality.samples, "mc-dropout")
    after = assess(x, labels, samples, qm, modality="DX", source_spacing=spacing, method=SamplingMethod.MC_DROPOUT)
    assert beside.assessment.quality == after.quality
    assert beside.assessment.rca.by_label() == after.rca.by_label() and beside.assessment.features == after.features

    off = analyse(pixels, spacing, "DX", segmenter, qm, QualitySettings(rca=False), {})
    assert off.assessment is not None and off.assessment.rca is None
    assert all(s.rca is None for s in off.assessment.quality.structures)
    np.testing.assert_array_equal(off.labels, beside.labels)
    plain = analyse(pixels, spacing, "DX", segmenter, None, QualitySettings(), {})  # no quality: labels only
    assert plain.assessment is None
    np.testing.assert_array_equal(plain.labels, beside.labels)
