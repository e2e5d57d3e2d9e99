"""Running the lesion model's networks: probabilities, Monte Carlo samples, counterfactuals."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def probabilities(model: nn.Module, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """Lesion probability ``(n,)`` of slices ``(n, 1, CROP, CROP)`` (evaluation mode)."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return np.concatenate([torch.sigmoid(model(x[i : i + batch]))[:, 0].numpy() for i in range(0, len(x), batch)])


@torch.no_grad()
def counterfactuals(generator: nn.Module, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Counterfactual slices ``(n, 1, CROP, CROP)``."""
    generator.eval()
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return np.concatenate([generator(x[i : i + batch]).numpy() for i in range(0, len(x), batch)])
