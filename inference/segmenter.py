"""Run a bundled model: source image in, class probabilities or labels out.

One :class:`Segmenter` per model and process: it opens the model once on the backend
:mod:`inference.backends` chooses (ONNX Runtime CUDA, torch CUDA, ONNX Runtime CPU, or one forced by the
settings) and is then called for every image. Windows go to the network in batches, quality samples
included (the windows of all samples are cut from one batch of inputs): on a GPU all windows of all samples
in one call; on the CPU, where a large batch only adds memory traffic, a few windows per call
(``InferenceSettings.max_batch_voxels``, :data:`inference.backends.CPU_BATCH_VOXELS`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from inference.backends import (
    MC_DISABLED_OPTIMIZERS,
    Backend,
    InferenceSettings,
    Runner,
    available_providers,
    max_windows_per_call,
    open_runner,
    open_session,
)
from inference.model_card import ModelCard, load_card
from inference.preprocess import labels_to_source, probabilities_to_source, to_model_grid

__all__ = ["MC_DISABLED_OPTIMIZERS", "Segmenter", "available_providers", "open_session", "window_count"]

logger = logging.getLogger(__name__)


def window_count(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Windows MONAI's sliding window cuts an image of ``shape`` into (its scan rule)."""
    total = 1
    for size, r in zip(shape, roi, strict=True):
        if r >= size:
            continue
        step = max(int(r * (1 - overlap)), 1)
        total *= int(np.ceil((size - r) / step)) + 1
    return total


class Segmenter:
    """A bundled model ready to run.

    Parameters
    ----------
    model_dir
        folder holding ``card.yaml``, the two ONNX graphs and the torch weights.
    prefer_gpu
        with backend ``auto``: use a GPU when one can run the model.
    overlap
        sliding-window overlap (fraction of the patch).
    backend
        ``auto`` or a forced backend (see :mod:`inference.backends`); default the settings' backend.
    settings
        the ``inference`` settings (backend, ONNX Runtime threads, batch cap).
    """

    def __init__(
        self,
        model_dir: Path,
        prefer_gpu: bool = True,
        overlap: float = 0.25,
        backend: Backend | None = None,
        settings: InferenceSettings | None = None,
    ):
        self.card: ModelCard = load_card(model_dir)
        self.model_dir = model_dir
        self.overlap = overlap
        self.settings = settings or InferenceSettings()
        self._runner: Runner = open_runner(
            model_dir, self.card, backend or self.settings.backend, prefer_gpu=prefer_gpu, settings=self.settings
        )
        self.backend = self._runner.backend
        self.providers = self._runner.providers

    @property
    def providers_in_use(self) -> list[str]:
        return list(self._runner.providers)

    def _predict_windows(self, patches: torch.Tensor, mc_dropout: bool) -> torch.Tensor:
        """Probabilities ``(batch, classes, *patch)`` of windows ``(batch, 1, *patch)``."""
        return self._runner(patches, mc_dropout)

    def batch_probabilities(self, inputs: np.ndarray, mc_dropout: bool = False) -> np.ndarray:
        """Probabilities ``(k, classes, *model_grid)`` of ``k`` preprocessed inputs ``(k, 1, *model_grid)``,
        windows blended with Gaussian weights; all windows of all inputs go to the network together, as many
        per call as ``max_batch_voxels`` allows."""
        patch = self.card.input.patch_size
        per_call = max_windows_per_call(patch, self.settings, getattr(self, "backend", "onnx-cpu"))
        windows = window_count(inputs.shape[2:], patch, self.overlap) * inputs.shape[0]

        def predictor(batch: torch.Tensor) -> torch.Tensor:
            return self._predict_windows(batch, mc_dropout)

        with torch.no_grad():
            probs = sliding_window_inference(
                torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)),
                roi_size=patch,
                sw_batch_size=max(1, min(per_call, windows)),
                predictor=predictor,
                overlap=self.overlap,
                mode="gaussian",
            )
        return np.asarray(probs)

    def model_grid_probabilities(self, model_input: np.ndarray, mc_dropout: bool = False) -> np.ndarray:
        """Softmax probabilities ``(classes, *model_grid)`` for a preprocessed input ``(1, *model_grid)``."""
        return self.batch_probabilities(model_input[None], mc_dropout)[0]

    def samples(self, model_input: np.ndarray, n: int, method: str = "mc-dropout") -> np.ndarray:
        """``n`` stochastic softmax samples ``(n, classes, *model_grid)`` of a preprocessed input.

        ``mc-dropout`` runs the always-dropout network on ``n`` copies of the input in one batch (every
        window of every copy draws its own dropout masks, as one pass per sample did). ``tta-flip`` runs the
        deterministic network on transformed copies of the input, in one batch, and maps each output back:
        mirror flips along the axes the card declares mirror-safe (``input.mirror_axes``; none for the CT
        model, whose left and right kidneys would swap), then small shifts (2 voxels) and the contrast/gamma
        jitter the network was trained with, in a fixed order so that the samples are reproducible.
        """
        if n < 2:
            raise ValueError(f"at least 2 samples are needed to measure their spread, got {n}")
        if method == "mc-dropout":
            return self.batch_probabilities(np.repeat(model_input[None], n, axis=0), mc_dropout=True)
        if method != "tta-flip":
            raise ValueError(f"unknown sampling method '{method}' (accepted: mc-dropout, tta-flip)")
        plan = _tta_plan(n, self.card.input.mirror_axes, model_input.ndim - 1)
        inputs = []
        for flip, shift, gamma in plan:
            x = model_input
            axes = tuple(a + 1 for a in flip)
            if axes:
                x = np.flip(x, axis=axes)
            if shift:
                x = np.roll(x, shift, axis=tuple(range(1, x.ndim)))
            inputs.append(np.ascontiguousarray(np.clip(x, 0.0, None) ** gamma, dtype=np.float32))
        probs = self.batch_probabilities(np.stack(inputs))
        out = []
        for (flip, shift, _), p in zip(plan, probs, strict=True):
            axes = tuple(a + 1 for a in flip)
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
        return probabilities_to_source(self.model_grid_probabilities(self._model_input(image, spacing)), image.shape)

    def segment(self, image: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
        """Label map (uint8, values as in the card's labels) on the source grid: the argmax of
        :meth:`probabilities`."""
        return labels_to_source(self.model_grid_probabilities(self._model_input(image, spacing)), image.shape)

    def _model_input(self, image: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
        """``image`` (as for :meth:`probabilities`) preprocessed to the model grid, ``(1, *model_grid)``."""
        expected = self.card.input.spatial_dims
        if image.ndim != expected:
            raise ValueError(f"model {self.card.name} takes {expected}D images, got an array of shape {image.shape}")
        return to_model_grid(image, spacing, self.card.input)


def _tta_plan(n: int, mirror_axes: Sequence[int], dims: int) -> list[tuple[tuple[int, ...], tuple[int, ...], float]]:
    """The first ``n`` test-time transforms: (flipped axes, shift per axis in voxels, gamma)."""
    flips: list[tuple[int, ...]] = [()] + [(a,) for a in mirror_axes]
    shifts: list[tuple[int, ...]] = [()] + [tuple(s * (1 if i % 2 == 0 else -1) for i in range(dims)) for s in (2, -2)]
    gammas = (1.0, 0.9, 1.1)
    plan = [(f, sh, g) for g in gammas for sh in shifts for f in flips]
    return [plan[i % len(plan)] for i in range(n)]
