"""The export path: ONNX graphs equal torch (deterministic) and differ between samples (MC dropout)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.export import export_graphs, max_abs_difference
from inference.model_card import NetworkSpec
from inference.network import build_unet
from inference.segmenter import open_session
from inference.training import EXPORT_TOLERANCE, RECIPES


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_deterministic_graph_matches_torch(tmp_path: Path, name: str) -> None:
    recipe = RECIPES[name]
    torch.manual_seed(0)
    model = build_unet(recipe.network, recipe.input.spatial_dims, 4)
    det, _ = export_graphs(model, recipe.input.patch_size, tmp_path)
    x = np.random.default_rng(1).random((1, 1, *recipe.input.patch_size), dtype=np.float32)
    assert max_abs_difference(model, det, x) <= EXPORT_TOLERANCE
    # the deterministic graph is deterministic
    s = open_session(det, ["CPUExecutionProvider"])
    assert np.array_equal(s.run(None, {"image": x})[0], s.run(None, {"image": x})[0])


def test_mc_graph_samples_differ_and_average_to_the_network(tmp_path: Path) -> None:
    spec = NetworkSpec(channels=(4, 8), strides=(2,), num_res_units=1, dropout=0.2)
    torch.manual_seed(0)
    model = build_unet(spec, 2, 3)
    _, mc = export_graphs(model, (32, 32), tmp_path)
    x = np.random.default_rng(2).random((1, 1, 32, 32), dtype=np.float32)
    s = open_session(mc, ["CPUExecutionProvider"], mc_dropout=True)
    samples = np.stack([s.run(None, {"image": x})[0] for _ in range(40)])
    assert np.abs(samples[0] - samples[1]).max() > 1e-3
    with torch.no_grad():
        ref = torch.softmax(model.eval()(torch.from_numpy(x)), dim=1).numpy()
    assert np.allclose(samples.sum(axis=2), 1.0, atol=1e-5)  # each sample is a probability map (axis 2: classes)
    # inverted dropout: the mean of many samples approaches the deterministic output
    assert np.abs(samples.mean(0) - ref).mean() < np.abs(samples[0] - ref).mean()


def test_mc_graph_needs_eliminate_dropout_disabled(tmp_path: Path) -> None:
    """ONNX Runtime removes dropout by default; the MC graph samples only with that optimiser disabled."""
    spec = NetworkSpec(channels=(4, 8), strides=(2,), num_res_units=1, dropout=0.2)
    model = build_unet(spec, 2, 3)
    _, mc = export_graphs(model, (32, 32), tmp_path)
    x = np.random.default_rng(3).random((1, 1, 32, 32), dtype=np.float32)
    plain = open_session(mc, ["CPUExecutionProvider"], mc_dropout=False)
    assert np.array_equal(plain.run(None, {"image": x})[0], plain.run(None, {"image": x})[0])
    sampling = open_session(mc, ["CPUExecutionProvider"], mc_dropout=True)
    assert not np.array_equal(sampling.run(None, {"image": x})[0], sampling.run(None, {"image": x})[0])


def test_bundled_graphs_match_their_torch_weights() -> None:
    """The shipped model.onnx is the shipped weights.pt, within 1e-4 on a real preprocessed image."""
    from cohorts.kinds import get_kind
    from cohorts.subjects import draw_subject
    from inference.model_card import bundled_models, load_card
    from inference.preprocess import to_model_grid

    for name, folder in bundled_models().items():
        card = load_card(folder)
        model = build_unet(card.network, card.input.spatial_dims, card.n_classes)
        model.load_state_dict(torch.load(folder / card.files.weights, weights_only=True))
        kind = get_kind(card.training.cohort.kind)
        subject = draw_subject(kind.name, 0, 999)
        gen_kwargs = {"matrix": 128} if kind.name == "ct-abdomen" else {}
        synth = kind.generate(subject, **gen_kwargs)  # type: ignore[call-arg]
        x = to_model_grid(synth.pixels, synth.spacing, card.input)
        patch = np.zeros((1, 1, *card.input.patch_size), np.float32)
        region = tuple(slice(0, min(a, b)) for a, b in zip(x.shape[1:], card.input.patch_size, strict=True))
        patch[(0, 0, *region)] = x[(0, *region)]
        assert max_abs_difference(model, folder / card.files.deterministic, patch) <= EXPORT_TOLERANCE, name


def test_bundled_graphs_are_reproducible_from_their_weights(tmp_path: Path) -> None:
    """Exporting the shipped weights again gives the shipped graphs, byte for byte."""
    from inference.model_card import bundled_models, load_card, sha256_of

    for name, folder in bundled_models().items():
        card = load_card(folder)
        model = build_unet(card.network, card.input.spatial_dims, card.n_classes)
        model.load_state_dict(torch.load(folder / card.files.weights, weights_only=True))
        det, mc = export_graphs(model, card.input.patch_size, tmp_path / name)
        assert sha256_of(det) == card.files.deterministic_sha256, name
        assert sha256_of(mc) == card.files.mc_dropout_sha256, name
