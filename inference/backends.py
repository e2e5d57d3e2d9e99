"""Which engine runs a model's windows, chosen in this one place, and the engines themselves.

A *runner* takes a batch of windows ``(batch, 1, *patch)`` and returns their class probabilities
``(batch, classes, *patch)`` (float32, host memory), deterministic or with MC dropout. The backends:

- ``onnx-cuda``: ONNX Runtime with the ``CUDAExecutionProvider`` (onnxruntime-gpu), the shipped graphs;
- ``torch-cuda``: torch on the GPU running the shipped ``weights.pt``, the state dict the ONNX graphs were
  exported from, in a network rebuilt from the card's ``network`` section (fp32, TF32 off; MC dropout by
  keeping the dropout layers in train mode);
- ``onnx-cpu``: ONNX Runtime on the CPU;
- ``torch-cpu``: the torch network on the CPU (the reference the other backends are tested against).

``auto`` (the default) takes the first of ``onnx-cuda``, ``torch-cuda``, ``onnx-cpu`` that this machine can
run (:func:`choose_backend`). The graphs are stored with a batch of 1; they are opened with a symbolic batch
axis so that all windows of all MC samples go through one call (the network has no reshape that depends on
the batch).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, get_args

import numpy as np
import onnx
import onnxruntime as ort
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from inference.model_card import ModelCard
from inference.network import build_unet

__all__ = [
    "BACKENDS",
    "CPU_BATCH_VOXELS",
    "GPU_BATCH_VOXELS",
    "Backend",
    "BackendError",
    "InferenceSettings",
    "OnnxRunner",
    "Runner",
    "TorchRunner",
    "available_providers",
    "choose_backend",
    "max_windows_per_call",
    "open_runner",
    "open_session",
    "ort_cuda_available",
    "torch_cuda_available",
]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "onnx-cpu", "onnx-cuda", "torch-cuda", "torch-cpu"]
BACKENDS: tuple[str, ...] = get_args(Backend)

#: ONNX Runtime would otherwise delete the dropout of the MC graph and every sample would be the same.
MC_DISABLED_OPTIMIZERS = ["EliminateDropout"]
CUDA_PROVIDER = "CUDAExecutionProvider"
#: the session option saying whether intra-op threads spin-wait
SPINNING_ENTRY = "session.intra_op.allow_spinning"
CPU_PROVIDER = "CPUExecutionProvider"


class InferenceSettings(BaseModel):
    """How models are run (the ``inference:`` section of the settings)."""

    model_config = ConfigDict(extra="forbid")

    backend: Backend = Field("auto", description="auto: onnx-cuda, else torch-cuda, else onnx-cpu")
    ort_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads on the CPU; 0: its default")
    ort_spinning: bool = Field(
        False,
        description="ONNX Runtime's intra-op threads spin-wait for work (its default) instead of sleeping; off by "
        "default: on a CPU shared with the receiver and other processes, sleeping threads ran the CT windows "
        "10-20% faster (0.71 against 0.81 s per window, 2 threads, 2 cores at load 10)",
    )
    max_batch_voxels: int | None = Field(
        None,
        ge=1,
        description="windows per network call are capped at this many input voxels; default: "
        "CPU_BATCH_VOXELS on the CPU, GPU_BATCH_VOXELS on a GPU",
    )


#: windows per call on the CPU: 4 ct-abdomen windows (48x96x96), 32 xr-knee windows (256x256). Batching is
#: for the GPU: ONNX Runtime CPU ran 4 MC samples of a 128-slice CT (32 windows) in the same time with 1, 2 or 4
#: windows per call and about 20% slower with all 32 in one call (benchmarks/sampling_batch.py).
CPU_BATCH_VOXELS = 1 << 21
#: windows per call on a GPU: all 32 windows of 4 MC samples of a ct-abdomen study in one call.
GPU_BATCH_VOXELS = 1 << 24


class BackendError(ValueError):
    """A backend that was asked for and cannot run here, or a model it cannot run."""


def ort_cuda_available() -> bool:
    """Whether this ONNX Runtime build has the CUDA execution provider (onnxruntime-gpu)."""
    return CUDA_PROVIDER in ort.get_available_providers()


def torch_cuda_available() -> bool:
    """Whether torch sees a CUDA GPU."""
    return bool(torch.cuda.is_available())


def has_weights(model_dir: Path, card: ModelCard) -> bool:
    """Whether the model ships the torch weights of a fairnode UNet (what the torch backends run)."""
    return card.network.architecture == "monai.networks.nets.UNet" and (model_dir / card.files.weights).is_file()


def choose_backend(requested: Backend = "auto", *, prefer_gpu: bool = True, weights: bool = True) -> str:
    """The backend to run a model on.

    Parameters
    ----------
    requested
        a backend from the settings; ``auto`` picks ``onnx-cuda``, else ``torch-cuda`` (when the model has
        ``weights``), else ``onnx-cpu``.
    prefer_gpu
        with ``auto``: ``False`` keeps to the CPU.
    weights
        whether the model ships torch weights (the torch backends need them).

    Raises
    ------
    BackendError
        when ``requested`` is not one of :data:`BACKENDS` or cannot run on this machine or for this model.
    """
    if requested not in BACKENDS:
        raise BackendError(f"unknown inference backend {requested!r} (accepted: {', '.join(BACKENDS)})")
    if requested == "auto":
        if prefer_gpu and ort_cuda_available():
            return "onnx-cuda"
        if prefer_gpu and weights and torch_cuda_available():
            return "torch-cuda"
        return "onnx-cpu"
    if requested == "onnx-cuda" and not ort_cuda_available():
        have = ", ".join(ort.get_available_providers())
        raise BackendError(
            f"inference backend onnx-cuda: this ONNX Runtime has no {CUDA_PROVIDER} (it has {have}); "
            "accepted here: auto, onnx-cpu" + (", torch-cuda" if torch_cuda_available() else "") + ", torch-cpu"
        )
    if requested.startswith("torch-") and not weights:
        raise BackendError(f"inference backend {requested}: the model ships no torch weights; accepted: auto, onnx-*")
    if requested == "torch-cuda" and not torch_cuda_available():
        raise BackendError("inference backend torch-cuda: torch sees no CUDA GPU; accepted here: auto, onnx-cpu")
    return requested


def available_providers(prefer_gpu: bool = True) -> list[str]:
    """ONNX Runtime execution providers to use, best first: CUDA when installed and wanted, then CPU."""
    return [*([CUDA_PROVIDER] if prefer_gpu and ort_cuda_available() else []), CPU_PROVIDER]


def _batch_axis_symbolic(path: Path) -> bytes:
    """The graph at ``path`` with a symbolic first axis on its input and output (stored shapes dropped)."""
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del model.graph.value_info[:]
    return bytes(model.SerializeToString())


def open_session(
    path: Path,
    providers: Sequence[str],
    mc_dropout: bool = False,
    *,
    batched: bool = False,
    threads: int = 0,
    spinning: bool = False,
) -> ort.InferenceSession:
    """An ONNX Runtime session of the graph at ``path``.

    ``mc_dropout`` keeps its dropout (see :data:`MC_DISABLED_OPTIMIZERS`); ``batched`` opens it with a
    symbolic batch axis; ``threads`` sets the intra-op threads (0: ONNX Runtime's default), ``spinning``
    whether they spin-wait between operators (see :attr:`InferenceSettings.ort_spinning`).
    """
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry(SPINNING_ENTRY, "1" if spinning else "0")
    kwargs: dict[str, object] = {}
    if mc_dropout:
        kwargs["disabled_optimizers"] = MC_DISABLED_OPTIMIZERS
    source: str | bytes = _batch_axis_symbolic(path) if batched else str(path)
    return ort.InferenceSession(source, sess_options=opts, providers=list(providers), **kwargs)


class Runner(Protocol):
    """Class probabilities of a batch of windows on one backend."""

    backend: str

    @property
    def providers(self) -> list[str]:
        """What runs the windows (ONNX Runtime providers in use, or ``torch-<device>``)."""
        ...

    def __call__(self, patches: torch.Tensor, mc_dropout: bool) -> torch.Tensor:
        """Probabilities ``(batch, classes, *patch)`` (CPU float32) of windows ``(batch, 1, *patch)``."""
        ...


class OnnxRunner:
    """The model's two ONNX graphs in ONNX Runtime (CUDA or CPU), batch axis symbolic."""

    def __init__(self, model_dir: Path, card: ModelCard, *, cuda: bool, threads: int = 0, spinning: bool = False):
        self.backend = "onnx-cuda" if cuda else "onnx-cpu"
        self._providers = [CUDA_PROVIDER, CPU_PROVIDER] if cuda else [CPU_PROVIDER]
        self._paths = (model_dir / card.files.deterministic, model_dir / card.files.mc_dropout)
        self._threads = threads
        self._spinning = spinning
        self._sessions: dict[bool, ort.InferenceSession] = {False: self._open(False)}

    def _open(self, mc: bool) -> ort.InferenceSession:
        return open_session(
            self._paths[mc], self._providers, mc, batched=True, threads=self._threads, spinning=self._spinning
        )

    @property
    def providers(self) -> list[str]:
        providers: list[str] = self._sessions[False].get_providers()
        return providers

    def __call__(self, patches: torch.Tensor, mc_dropout: bool) -> torch.Tensor:
        if mc_dropout not in self._sessions:
            self._sessions[mc_dropout] = self._open(mc_dropout)
        session = self._sessions[mc_dropout]
        x = np.ascontiguousarray(patches.detach().cpu().numpy(), dtype=np.float32)
        out = session.run(None, {session.get_inputs()[0].name: x})[0]
        return torch.from_numpy(out)


class TorchRunner:
    """The shipped ``weights.pt`` in the card's network, on CPU or CUDA (fp32, TF32 off)."""

    def __init__(self, model_dir: Path, card: ModelCard, *, cuda: bool):
        self.backend = "torch-cuda" if cuda else "torch-cpu"
        self.device = torch.device("cuda" if cuda else "cpu")
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        net = build_unet(card.network, card.input.spatial_dims, len(card.labels) + 1)
        state = torch.load(model_dir / card.files.weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        self._det = net.to(self.device).eval()
        self._mc = copy.deepcopy(self._det)
        for module in self._mc.modules():
            if isinstance(module, nn.Dropout):
                module.train()  # MC dropout: only the dropout layers sample; instance norm keeps no statistics

    @property
    def providers(self) -> list[str]:
        return [self.backend]

    def __call__(self, patches: torch.Tensor, mc_dropout: bool) -> torch.Tensor:
        net = self._mc if mc_dropout else self._det
        with torch.no_grad():
            out = torch.softmax(net(patches.to(self.device, dtype=torch.float32)), dim=1)
        return out.float().cpu()


def open_runner(
    model_dir: Path,
    card: ModelCard,
    backend: Backend = "auto",
    *,
    prefer_gpu: bool = True,
    settings: InferenceSettings | None = None,
) -> Runner:
    """The runner of the model in ``model_dir`` on ``backend`` (resolved by :func:`choose_backend`)."""
    settings = settings or InferenceSettings()
    chosen = choose_backend(backend, prefer_gpu=prefer_gpu, weights=has_weights(model_dir, card))
    runner: Runner
    if chosen.startswith("onnx-"):
        runner = OnnxRunner(
            model_dir, card, cuda=chosen == "onnx-cuda", threads=settings.ort_threads, spinning=settings.ort_spinning
        )
    else:
        runner = TorchRunner(model_dir, card, cuda=chosen == "torch-cuda")
    logger.info("model %s %s: backend %s, providers %s", card.name, card.version, chosen, runner.providers)
    return runner


def max_windows_per_call(
    patch_size: Sequence[int], settings: InferenceSettings | None = None, backend: str = "onnx-cpu"
) -> int:
    """How many windows of ``patch_size`` one network call on ``backend`` may take (``max_batch_voxels``)."""
    cap = (settings or InferenceSettings()).max_batch_voxels
    if cap is None:
        cap = GPU_BATCH_VOXELS if backend.endswith("-cuda") else CPU_BATCH_VOXELS
    return max(1, cap // math.prod(patch_size))
