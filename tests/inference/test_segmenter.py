"""The bundled models through ONNX Runtime on fresh subjects (never seen in training or validation)."""

from __future__ import annotations

import numpy as np
import pytest

from cohorts.kinds import get_kind
from cohorts.subjects import draw_subject
from inference.model_card import bundled_models, load_card
from inference.segmenter import Segmenter
from inference.training import dice_per_label

FRESH_SEED = 4242


@pytest.mark.parametrize("name", ["ct-abdomen", "xr-knee"])
def test_bundled_model_segments_fresh_subjects(name: str) -> None:
    folder = bundled_models()[name]
    seg = Segmenter(folder, prefer_gpu=False)
    assert seg.providers_in_use[-1] == "CPUExecutionProvider"
    kind = get_kind(seg.card.training.cohort.kind)
    dice = []
    for i in range(2):
        subject = draw_subject(kind.name, i, FRESH_SEED)
        synth = kind.generate(subject, **({"matrix": 256} if name == "ct-abdomen" else {}))  # type: ignore[call-arg]
        pred = seg.segment(synth.pixels, synth.spacing)
        assert pred.shape == synth.labels.shape and pred.dtype == np.uint8
        dice.append(dice_per_label(pred, synth.labels, seg.card.n_classes))
    mean = np.nanmean(np.stack(dice), axis=0)
    for label, d in zip(seg.card.labels, mean, strict=True):
        assert d >= 0.85, f"{name} {label.name}: Dice {d:.3f} on fresh subjects"


@pytest.mark.parametrize("name", ["ct-abdomen", "xr-knee"])
def test_card_records_the_validation_targets(name: str) -> None:
    card = load_card(bundled_models()[name])
    assert card.validation is not None
    assert card.validation.cohort.n >= 40
    assert min(card.validation.dice.values()) >= 0.90, card.validation.dice


def test_mc_dropout_samples_differ_on_an_image() -> None:
    folder = bundled_models()["xr-knee"]
    seg = Segmenter(folder, prefer_gpu=False)
    kind = get_kind("xr-knee")
    synth = kind.generate(draw_subject("xr-knee", 0, FRESH_SEED))
    from inference.preprocess import to_model_grid

    x = to_model_grid(synth.pixels, synth.spacing, seg.card.input)
    a = seg.model_grid_probabilities(x, mc_dropout=True)
    b = seg.model_grid_probabilities(x, mc_dropout=True)
    det = seg.model_grid_probabilities(x)
    assert np.abs(a - b).max() > 0.01
    assert np.allclose(a.sum(0), 1.0, atol=1e-4) and np.allclose(det.sum(0), 1.0, atol=1e-4)
