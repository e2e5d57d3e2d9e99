"""Export a trained network to the two ONNX graphs a model ships with.

- ``model.onnx``: the deterministic network (dropout removed), used for the segmentation.
- ``model_mc.onnx``: the same weights with every dropout always applied, used for MC-dropout sampling;
  open it with ``disabled_optimizers=["EliminateDropout"]`` (see :mod:`inference.segmenter`).

Both graphs end in a softmax over the class axis: they output class probabilities ``(1, classes, *patch)``,
which are what sliding windows average and MC samples are compared on (and what float32 rounding leaves
within 1e-4 of torch, unlike raw logits of a trained network).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from inference.network import with_dropout_always_on
from inference.segmenter import open_session

logger = logging.getLogger(__name__)

OPSET = 18


class WithSoftmax(nn.Module):
    """``model`` followed by a softmax over the class axis (axis 1)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def _export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["probabilities"],
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))


def export_graphs(model: nn.Module, patch_size: tuple[int, ...], folder: Path) -> tuple[Path, Path]:
    """Write ``model.onnx`` and ``model_mc.onnx`` for inputs ``(1, 1, *patch_size)`` into ``folder``."""
    example = torch.zeros((1, 1, *patch_size), dtype=torch.float32)
    model = copy.deepcopy(model).cpu().eval()
    det = folder / "model.onnx"
    _export(WithSoftmax(model), example, det)
    mc = folder / "model_mc.onnx"
    _export(WithSoftmax(with_dropout_always_on(copy.deepcopy(model))), example, mc)
    logger.info("exported %s and %s", det, mc)
    return det, mc


def max_abs_difference(model: nn.Module, onnx_path: Path, x: np.ndarray) -> float:
    """Largest absolute difference between torch (eval mode) and ONNX Runtime probabilities for input ``x``."""
    model = model.cpu().eval()
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    session = open_session(onnx_path, ["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.abs(ref - out).max())
