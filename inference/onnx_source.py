"""An ONNX graph from elsewhere: what it says about its input and output, and the graphs fairnode runs from it.

fairnode's graphs take ``(1, 1, *patch)`` float32 and give class probabilities ``(1, classes, *patch)``.
A graph that gives logits gets a ``Softmax`` over axis 1 appended. A graph with ``Dropout`` nodes (opset 12
or newer) also gets an MC-dropout twin, ``model_mc.onnx``, whose dropouts run in training mode (opened with
``disabled_optimizers=["EliminateDropout"]``, see :mod:`inference.segmenter`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper

from inference.bundle import BundleError

if TYPE_CHECKING:
    from inference.model_import import ImportAnswers

__all__ = ["OnnxInfo", "read_onnx", "write_onnx_graphs"]

logger = logging.getLogger(__name__)

_MIN_DROPOUT_OPSET = 12


@dataclass(frozen=True)
class OnnxInfo:
    """What an ONNX graph says: its static patch size and output channels (``None`` where dynamic)."""

    path: Path
    model: onnx.ModelProto
    patch_size: tuple[int, ...] | None
    n_outputs: int | None
    dropout_nodes: int
    opset: int


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def read_onnx(path: Path, answers: ImportAnswers) -> OnnxInfo:
    """Read and check an ONNX graph (one input ``(1, 1, *patch)``, one output).

    Raises
    ------
    BundleError
        naming the file when it is not a valid graph or its input is not one channel of a 2D/3D patch.
    """
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (OSError, onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise BundleError(f"{path} is not a valid ONNX graph: {str(exc).splitlines()[0]}") from exc
    graph = model.graph
    initialisers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise BundleError(
            f"{path}: the graph has {len(inputs)} inputs and {len(graph.output)} outputs (accepted: 1 and 1)"
        )
    dims_in, dims_out = _dims(inputs[0]), _dims(graph.output[0])
    if len(dims_in) not in (4, 5) or dims_in[1] not in (1, None):
        raise BundleError(f"{path}: input shape {dims_in} (accepted: (1, 1, *patch) for a 2D or 3D patch)")
    spatial = dims_in[2:]
    patch = tuple(int(d or 0) for d in spatial) if all(spatial) else answers.patch_size
    if patch is not None and len(patch) != len(spatial):
        raise BundleError(f"{path}: patch_size {list(patch)} does not match the {len(spatial)}D input {dims_in}")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    dropouts = sum(1 for n in graph.node if n.op_type == "Dropout")
    n_out = dims_out[1] if len(dims_out) == len(dims_in) else None
    return OnnxInfo(path, model, patch, n_out, dropouts, opset)


def _with_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    old = out.graph.output[0]
    logits = f"{old.name}_logits"
    for node in out.graph.node:
        node.output[:] = [logits if o == old.name else o for o in node.output]
    out.graph.node.append(helper.make_node("Softmax", [logits], [old.name], axis=1, name="fairnode_softmax"))
    return out


def _mc(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with every Dropout in training mode (``training_mode`` input set to a constant ``True``)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    flag = "fairnode_dropout_training_mode"
    out.graph.initializer.append(helper.make_tensor(flag, TensorProto.BOOL, [], [True]))
    for node in out.graph.node:
        if node.op_type == "Dropout":
            inputs = list(node.input) + [""] * (3 - len(node.input))
            inputs[2] = flag
            node.input[:] = inputs
    return out


def write_onnx_graphs(
    info: OnnxInfo, patch: tuple[int, ...], n_classes: int, folder: Path, *, softmax: bool
) -> tuple[bool, float | None]:
    """Write ``source.onnx`` (a copy), ``model.onnx`` and, when the graph has dropout, ``model_mc.onnx``.

    Returns whether an MC-dropout graph was written, and the largest |difference| between ``model.onnx``
    and the source graph (followed by a softmax when ``softmax``) on a random input, as a check.

    Raises
    ------
    BundleError
        when the graph does not run on ``(1, 1, *patch)`` or its output is not ``(1, n_classes, *patch)``.
    """
    from inference.segmenter import open_session

    shutil.copyfile(info.path, folder / "source.onnx")
    det = _with_softmax(info.model) if softmax else info.model
    onnx.save(det, str(folder / "model.onnx"))
    x = np.random.default_rng(0).random((1, 1, *patch), dtype=np.float32)
    try:
        session = open_session(folder / "model.onnx", ["CPUExecutionProvider"])
        y = session.run(None, {session.get_inputs()[0].name: x})[0]
        raw = open_session(folder / "source.onnx", ["CPUExecutionProvider"])
        ref = raw.run(None, {raw.get_inputs()[0].name: x})[0]
    except Exception as exc:  # ONNX Runtime raises its own exception types; reported, not swallowed
        raise BundleError(f"{info.path}: the graph does not run on an input (1, 1, {patch}): {exc}") from exc
    if y.shape != (1, n_classes, *patch):
        raise BundleError(
            f"{info.path}: for an input {x.shape} the graph gives {y.shape}; expected {(1, n_classes, *patch)}"
        )
    if softmax:
        ref = np.exp(ref - ref.max(axis=1, keepdims=True))
        ref = ref / ref.sum(axis=1, keepdims=True)
    elif not np.allclose(y.sum(axis=1), 1.0, atol=1e-3) or y.min() < -1e-6:
        raise BundleError(f"{info.path}: the output does not sum to 1 over the classes; answer 'output: logits'")
    mc = info.dropout_nodes > 0 and info.opset >= _MIN_DROPOUT_OPSET
    if info.dropout_nodes and not mc:
        logger.warning(
            "%s: Dropout nodes of opset %d cannot be switched on; test-time augmentation", info.path, info.opset
        )
    if mc:
        onnx.save(_mc(det), str(folder / "model_mc.onnx"))
    return mc, float(np.abs(y - ref).max())
