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
        ref = model.eval()(torch.from_numpy(x)).numpy()
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
