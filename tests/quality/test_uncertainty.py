"""Uncertainty maps and structure scores, on hand-made samples and on the bundled CT model's MC graph."""

from __future__ import annotations

import numpy as np
import pytest

from quality.uncertainty import dice, entropy_bits, maps, structure_scores


def _samples(agree: bool, n: int = 4) -> np.ndarray:
    """n samples of a 2-class 1D-ish image: a 10x10 square of class 1; disagreeing samples shift it."""
    out = np.zeros((n, 2, 20, 20), np.float32)
    for i in range(n):
        off = 0 if agree else 2 * i
        out[i, 1, 5 + off : 15 + off, 5:15] = 0.95
        out[i, 0] = 1 - out[i, 1]
    return out


def test_entropy_of_uniform_and_certain_distributions() -> None:
    p = np.array([[0.5, 1.0], [0.5, 0.0]])
    assert entropy_bits(p) == pytest.approx([1.0, 0.0], abs=1e-5)


def test_agreeing_samples_have_no_mutual_information() -> None:
    m = maps(_samples(agree=True))
    assert float(m.mutual_information.max()) < 1e-4
    assert m.mean_probabilities.shape == (2, 20, 20)


def test_disagreeing_samples_score_worse_than_agreeing_ones() -> None:
    labels = np.zeros((20, 20), np.uint8)
    labels[5:15, 5:15] = 1
    good = structure_scores(_samples(True), labels, (1.0, 1.0), ["square"])[0]
    bad = structure_scores(_samples(False), labels, (1.0, 1.0), ["square"])[0]
    assert good.sample_dice == pytest.approx(1.0)
    assert good.volume_cv == pytest.approx(0.0)
    assert good.volume == pytest.approx(100.0)  # mm2 for a 2D grid
    assert bad.sample_dice < 0.8
    assert bad.mean_entropy > good.mean_entropy
    assert bad.mean_mutual_information > good.mean_mutual_information


def test_missing_structure_and_shape_errors() -> None:
    s = _samples(True)
    empty = np.zeros((20, 20), np.uint8)
    score = structure_scores(s, empty, (1.0, 1.0), ["square"])[0]
    assert score.volume == 0.0
    with pytest.raises(ValueError, match="same grid"):
        structure_scores(s, np.zeros((5, 5), np.uint8), (1.0, 1.0), ["square"])
    with pytest.raises(ValueError, match="n >= 2"):
        maps(s[:1])
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


@pytest.fixture(scope="module")
def ct_case() -> tuple[object, np.ndarray]:
    from cohorts import ct_abdomen
    from cohorts.subjects import draw_subject
    from inference.model_card import bundled_models
    from inference.preprocess import to_model_grid
    from inference.segmenter import Segmenter

    seg = Segmenter(bundled_models()["ct-abdomen"], prefer_gpu=False)
    image = ct_abdomen.generate(draw_subject("ct-abdomen", 0, 7101), matrix=128, slice_thickness=5.0)
    return seg, to_model_grid(image.pixels, image.spacing, seg.card.input)


@pytest.mark.parametrize("method", ["mc-dropout", "tta-flip"])
def test_samples_of_the_bundled_model_differ_and_are_probabilities(
    ct_case: tuple[object, np.ndarray], method: str
) -> None:
    seg, x = ct_case
    samples = seg.samples(x, 3, method)  # type: ignore[attr-defined]
    assert samples.shape[:2] == (3, seg.card.n_classes)  # type: ignore[attr-defined]
    assert np.allclose(samples.sum(axis=1), 1.0, atol=1e-4)
    assert float(np.abs(samples[0] - samples[1]).max()) > 1e-3
    assert float(np.abs(samples[1] - samples[2]).max()) > 1e-3


def test_unknown_sampling_method_is_refused(ct_case: tuple[object, np.ndarray]) -> None:
    seg, x = ct_case
    with pytest.raises(ValueError, match="accepted: mc-dropout, tta-flip"):
        seg.samples(x, 2, "bootstrap")  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="at least 2"):
        seg.samples(x, 1)  # type: ignore[attr-defined]
