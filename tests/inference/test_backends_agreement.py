"""The torch backend (the shipped weights.pt, run on the CPU here) computes what the ONNX graphs compute, for
both bundled models; MC samples are drawn in one batched call and keep their distribution."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cohorts import ct_abdomen, xr_knee
from cohorts.subjects import draw_subject
from inference.model_card import MODELS_DIR, load_card
from inference.preprocess import to_model_grid
from inference.segmenter import Segmenter, window_count
from quality.uncertainty import maps

#: the agreement the product promises between backends (float32 kernels differ by ~5e-6 here)
TOLERANCE = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def knee() -> dict[str, Segmenter]:
    return {b: Segmenter(MODELS_DIR / "xr-knee", backend=b) for b in ("onnx-cpu", "torch-cpu")}


@pytest.fixture(scope="module")
def knee_input(knee: dict[str, Segmenter]) -> np.ndarray:
    """A cohort radiograph on the model grid (1, 386, 306): four windows."""
    image = xr_knee.generate(draw_subject("xr-knee", 0, 7))
    return to_model_grid(image.pixels, image.spacing, knee["onnx-cpu"].card.input)


@pytest.fixture(scope="module")
def ct_input() -> np.ndarray:
    """A small cohort CT (64 matrix, 6 mm slices) on the model grid, cut to (1, 60, 96, 96): two windows."""
    card = load_card(MODELS_DIR / "ct-abdomen")
    image = ct_abdomen.generate(draw_subject("ct-abdomen", 0, 7101), matrix=64, slice_thickness=6.0)
    x = to_model_grid(image.pixels, image.spacing, card.input)
    return np.ascontiguousarray(x[:, 7:67, 14:110, 14:110])


def test_knee_torch_weights_give_the_onnx_probabilities(knee: dict[str, Segmenter], knee_input: np.ndarray) -> None:
    ref = knee["onnx-cpu"].model_grid_probabilities(knee_input)
    got = knee["torch-cpu"].model_grid_probabilities(knee_input)
    assert ref.shape == got.shape == (5, *knee_input.shape[1:])
    assert float(np.abs(ref - got).max()) < TOLERANCE


def test_ct_torch_weights_give_the_onnx_probabilities(ct_input: np.ndarray) -> None:
    onnx_cpu = Segmenter(MODELS_DIR / "ct-abdomen", backend="onnx-cpu")
    torch_cpu = Segmenter(MODELS_DIR / "ct-abdomen", backend="torch-cpu")
    ref = onnx_cpu.model_grid_probabilities(ct_input)
    got = torch_cpu.model_grid_probabilities(ct_input)
    assert ref.shape == (6, 60, 96, 96)
    assert float(np.abs(ref - got).max()) < TOLERANCE
    # MC: the masks differ between engines, so compare the sample statistics (4 samples of two windows)
    torch.manual_seed(0)
    ort.set_seed(0)
    mc_ref, mc_got = onnx_cpu.samples(ct_input, 4), torch_cpu.samples(ct_input, 4)
    assert float(np.abs(mc_ref.mean(0) - mc_got.mean(0)).mean()) < 0.01
    spread_ref, spread_got = float(mc_ref.std(0).mean()), float(mc_got.std(0).mean())
    assert spread_ref > 0 and 0.7 < spread_got / spread_ref < 1.4


def _spy(seg: Segmenter, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    batches: list[int] = []
    predict = seg._predict_windows

    def counted(patches: torch.Tensor, mc_dropout: bool) -> torch.Tensor:
        batches.append(int(patches.shape[0]))
        return predict(patches, mc_dropout)

    monkeypatch.setattr(seg, "_predict_windows", counted)
    return batches


@pytest.mark.parametrize("backend", ["onnx-cpu", "torch-cpu"])
def test_mc_samples_are_one_call_distinct_and_seeded(
    knee: dict[str, Segmenter], knee_input: np.ndarray, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seg = knee[backend]
    calls = _spy(seg, monkeypatch)
    seed = torch.manual_seed if backend == "torch-cpu" else ort.set_seed
    seed(11)
    first = seg.samples(knee_input, 4)
    assert calls == [4 * window_count(knee_input.shape[1:], (256, 256), seg.overlap)] == [16]
    assert first.shape == (4, 5, *knee_input.shape[1:])
    for i in range(4):
        for j in range(i):
            assert float(np.abs(first[i] - first[j]).max()) > 0.1, f"samples {i} and {j} are the same"
    seed(11)
    assert np.array_equal(seg.samples(knee_input, 4), first)  # reproducible given the engine's seed


def test_mc_statistics_agree_between_engines_and_with_one_pass_per_sample(
    knee: dict[str, Segmenter], knee_input: np.ndarray
) -> None:
    """Mean probability, voxel spread and the predictor's uncertainty features of 8 samples: batched ONNX,
    batched torch, and one sliding-window pass per sample (the former way) agree."""
    onnx_cpu, torch_cpu = knee["onnx-cpu"], knee["torch-cpu"]
    torch.manual_seed(1)
    ort.set_seed(1)
    batched = onnx_cpu.samples(knee_input, 8)
    engines = torch_cpu.samples(knee_input, 8)
    looped = np.stack([onnx_cpu.model_grid_probabilities(knee_input, mc_dropout=True) for _ in range(8)])

    def features(s: np.ndarray) -> np.ndarray:
        m = maps(s)
        fg = m.mean_probabilities.argmax(0) > 0
        return np.array([m.entropy[fg].mean(), m.mutual_information[fg].mean(), s.std(0).mean()])

    ref = features(batched)
    for other in (engines, looped):
        assert float(np.abs(other.mean(0) - batched.mean(0)).mean()) < 0.01
        np.testing.assert_allclose(features(other), ref, rtol=0.15)


def test_tta_samples_are_batched_and_match_one_pass_each(
    knee: dict[str, Segmenter], knee_input: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    seg = knee["onnx-cpu"]
    calls = _spy(seg, monkeypatch)
    got = seg.samples(knee_input, 3, method="tta-flip")
    assert calls == [12]
    plain = seg.model_grid_probabilities(knee_input)
    assert float(np.abs(got[0] - plain).max()) < 1e-5  # the first transform is the identity
    flipped = seg.model_grid_probabilities(np.ascontiguousarray(np.flip(knee_input, axis=2)))
    assert float(np.abs(got[1] - np.flip(flipped, axis=2)).max()) < 1e-5
