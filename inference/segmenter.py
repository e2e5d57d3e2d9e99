"""Run a bundled model with ONNX Runtime: source image in, class probabilities or labels out.

One :class:`Segmenter` per model and process: it opens the ONNX Runtime sessions once (CUDA when
present and allowed, else CPU) and is then called for every image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from monai.inferers import sliding_window_inference

from inference.model_card import ModelCard, load_card
from inference.preprocess import probabilities_to_source, to_model_grid

logger = logging.getLogger(__name__)

#: ONNX Runtime would otherwise delete the dropout of the MC graph and every sample would be the same.
MC_DISABLED_OPTIMIZERS = ["EliminateDropout"]


def available_providers(prefer_gpu: bool = True) -> list[str]:
    """Execution providers to use, best first: CUDA when installed and wanted, then CPU."""
    have = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if prefer_gpu and p in have]
    return [*chosen, "CPUExecutionProvider"]


def open_session(path: Path, providers: Sequence[str], mc_dropout: bool = False) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    kwargs: dict[str, object] = {}
    if mc_dropout:
        kwargs["disabled_optimizers"] = MC_DISABLED_OPTIMIZERS
    return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers), **kwargs)


class Segmenter:
    """A bundled model ready to run.

    Parameters
    ----------
    model_dir
        folder holding ``card.yaml`` and the two ONNX graphs.
    prefer_gpu
        use the CUDA provider when onnxruntime-gpu and a GPU are present.
    overlap
        sliding-window overlap (fraction of the patch).
    """

    def __init__(self, model_dir: Path, prefer_gpu: bool = True, overlap: float = 0.25):
        self.card: ModelCard = load_card(model_dir)
        self.model_dir = model_dir
        self.providers = available_providers(prefer_gpu)
        self.overlap = overlap
        self._session = open_session(model_dir / self.card.files.deterministic, self.providers)
        self._mc_session: ort.InferenceSession | None = None
        logger.info(
            "model %s %s: providers in use %s",
            self.card.name,
            self.card.version,
            self._session.get_providers(),
        )

    @property
    def providers_in_use(self) -> list[str]:
        providers: list[str] = self._session.get_providers()
        return providers

    def _mc(self) -> ort.InferenceSession:
        if self._mc_session is None:
            self._mc_session = open_session(
                self.model_dir / self.card.files.mc_dropout, self.providers, mc_dropout=True
            )
        return self._mc_session

    def _run_window(self, session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(classes, *spatial)`` of one normalised image ``(1, *spatial)`` on the model grid,
        windows blended with Gaussian weights."""
        name = session.get_inputs()[0].name

        def predictor(patch: torch.Tensor) -> torch.Tensor:
            outs = [session.run(None, {name: patch[i : i + 1].numpy()})[0] for i in range(patch.shape[0])]
            return torch.from_numpy(np.concatenate(outs, axis=0))

        probs = sliding_window_inference(
            torch.from_numpy(x[None]),
            roi_size=self.card.input.patch_size,
            sw_batch_size=1,
            predictor=predictor,
            overlap=self.overlap,
            mode="gaussian",
        )
        return np.asarray(probs)[0]

    def model_grid_probabilities(self, model_input: np.ndarray, mc_dropout: bool = False) -> np.ndarray:
        """Softmax probabilities ``(classes, *model_grid)`` for a preprocessed input ``(1, *model_grid)``."""
        session = self._mc() if mc_dropout else self._session
        return self._run_window(session, model_input)

    def samples(self, model_input: np.ndarray, n: int, method: str = "mc-dropout") -> np.ndarray:
        """``n`` stochastic softmax samples ``(n, classes, *model_grid)`` of a preprocessed input.

        ``mc-dropout`` runs the always-dropout graph ``n`` times. ``tta-flip`` runs the deterministic graph
        on transformed copies of the input and maps each output back: mirror flips along the axes the card
        declares mirror-safe (``input.mirror_axes``; none for the CT model, whose left and right kidneys
        would swap), then small shifts (2 voxels) and the contrast/gamma jitter the network was trained
        with, in a fixed order so that the samples are reproducible.
        """
        if n < 2:
            raise ValueError(f"at least 2 samples are needed to measure their spread, got {n}")
        if method == "mc-dropout":
            return np.stack([self.model_grid_probabilities(model_input, mc_dropout=True) for _ in range(n)])
        if method != "tta-flip":
            raise ValueError(f"unknown sampling method '{method}' (accepted: mc-dropout, tta-flip)")
        out = []
        for flip, shift, gamma in _tta_plan(n, self.card.input.mirror_axes, model_input.ndim - 1):
            x = model_input
            axes = tuple(a + 1 for a in flip)
            if axes:
                x = np.flip(x, axis=axes)
            if shift:
                x = np.roll(x, shift, axis=tuple(range(1, x.ndim)))
            x = np.ascontiguousarray(np.clip(x, 0.0, None) ** gamma, dtype=np.float32)
            p = self.model_grid_probabilities(x)
            if shift:
                p = np.roll(p, tuple(-s for s in shift), axis=tuple(range(1, p.ndim)))
            if axes:
                p = np.flip(p, axis=axes)
            out.append(np.ascontiguousarray(p))
        return np.stack(out)

    def probabilities(self, image: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
        """Class probabilities ``(classes, *image.shape)`` on the source grid.

        Parameters
        ----------
        image
            raw pixel values (HU for CT), ``(slices, rows, columns)`` or ``(rows, columns)``.
        spacing
            millimetres per axis, in the same order.
        """
        expected = self.card.input.spatial_dims
        if image.ndim != expected:
            raise ValueError(f"model {self.card.name} takes {expected}D images, got an array of shape {image.shape}")
        x = to_model_grid(image, spacing, self.card.input)
        return probabilities_to_source(self.model_grid_probabilities(x), image.shape)

    def segment(self, image: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
        """Label map (uint8, values as in the card's labels) on the source grid."""
        return np.argmax(self.probabilities(image, spacing), axis=0).astype(np.uint8)


def _tta_plan(n: int, mirror_axes: Sequence[int], dims: int) -> list[tuple[tuple[int, ...], tuple[int, ...], float]]:
    """The first ``n`` test-time transforms: (flipped axes, shift per axis in voxels, gamma)."""
    flips: list[tuple[int, ...]] = [()] + [(a,) for a in mirror_axes]
    shifts: list[tuple[int, ...]] = [()] + [tuple(s * (1 if i % 2 == 0 else -1) for i in range(dims)) for s in (2, -2)]
    gammas = (1.0, 0.9, 1.1)
    plan = [(f, sh, g) for g in gammas for sh in shifts for f in flips]
    return [plan[i % len(plan)] for i in range(n)]
