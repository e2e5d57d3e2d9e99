"""Run an imported model whose network could not be exported to ONNX: its TorchScript files through torch.

:class:`TorchSegmenter` is a :class:`~inference.segmenter.Segmenter` whose windows are computed by torch
instead of ONNX Runtime: the same pre-processing, sliding window, test-time transforms and
post-processing, so the pipeline and quality estimation treat both alike. The card's
``files.deterministic`` and ``files.mc_dropout`` name TorchScript files (``model.ts``, ``model_mc.ts``)
that already end in a softmax; the second applies dropout at inference (MC-dropout sampling).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from inference.backends import InferenceSettings
from inference.model_card import ModelCard, load_card
from inference.segmenter import Segmenter

__all__ = ["TorchSegmenter"]

logger = logging.getLogger(__name__)


class TorchSegmenter(Segmenter):
    """An imported model kept as TorchScript (CUDA when present and allowed, else CPU; TF32 off).

    Parameters
    ----------
    model_dir
        folder holding ``card.yaml`` and the TorchScript files it names.
    prefer_gpu
        run on CUDA when torch has a GPU.
    overlap
        sliding-window overlap (fraction of the patch).
    """

    def __init__(self, model_dir: Path, prefer_gpu: bool = True, overlap: float = 0.25):
        self.card: ModelCard = load_card(model_dir)
        self.model_dir = model_dir
        self.overlap = overlap
        self.settings = InferenceSettings()
        self.device = torch.device("cuda" if prefer_gpu and torch.cuda.is_available() else "cpu")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.providers = [f"torch-{self.device.type}"]
        self._module = self._load(self.card.files.deterministic)
        self._mc_module: torch.jit.ScriptModule | None = None
        logger.info("model %s %s: torch on %s", self.card.name, self.card.version, self.device)

    def _load(self, name: str) -> torch.jit.ScriptModule:
        module = torch.jit.load(str(self.model_dir / name), map_location=self.device)
        module.eval()
        return module

    @property
    def providers_in_use(self) -> list[str]:
        return list(self.providers)

    def _predict_windows(self, patches: torch.Tensor, mc_dropout: bool) -> torch.Tensor:
        """Probabilities of a batch of windows (used by the batched sampling of :class:`Segmenter`)."""
        if mc_dropout and self._mc_module is None:
            self._mc_module = self._load(self.card.files.mc_dropout)
        module = self._mc_module if mc_dropout and self._mc_module is not None else self._module
        with torch.no_grad():
            out: torch.Tensor = module(patches.to(self.device))
        return out.float().cpu()

    def model_grid_probabilities(self, model_input: np.ndarray, mc_dropout: bool = False) -> np.ndarray:
        """Softmax probabilities ``(classes, *model_grid)`` for a preprocessed input ``(1, *model_grid)``."""
        if mc_dropout and self._mc_module is None:
            self._mc_module = self._load(self.card.files.mc_dropout)
        module = self._mc_module if mc_dropout and self._mc_module is not None else self._module

        def predictor(patch: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = module(patch.to(self.device))
            return out.float().cpu()

        with torch.no_grad():
            probs = sliding_window_inference(
                torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32)[None]),
                roi_size=self.card.input.patch_size,
                sw_batch_size=1,
                predictor=predictor,
                overlap=self.overlap,
                mode="gaussian",
            )
        return np.asarray(probs)[0]
