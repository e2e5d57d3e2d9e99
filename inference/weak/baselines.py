"""Attribution baselines on the same classifier: Grad-CAM and LayerCAM (captum and hooks), Score-CAM and
RISE (short implementations). Each returns maps ``(n, CROP, CROP)``, larger = more lesion-like, for
:func:`inference.weak.masks.scale_per_slice` and the same thresholding as COIN.

The ``grad-cam`` package is not used: its torchvision dependency has no CPU build for the torch here.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn
from torch.nn import functional

from inference.weak.slices import CROP

GRADCAM_LAYER = "net.layer_3"
LAYERCAM_LAYER = "net.layer_1"
SCORECAM_LAYER = "net.layer_2"


def _forward_with(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's output for ``x`` and ``layer``'s activation on the way."""
    acts: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, o: acts.append(o))
    try:
        y = model(x)
    finally:
        handle.remove()
    return y, acts[0]


def _up(a: torch.Tensor) -> torch.Tensor:
    return functional.interpolate(a, size=(CROP, CROP), mode="bilinear", align_corners=False)


def gradcam(model: nn.Module, images: torch.Tensor, batch: int = 64) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) at the classifier's last stage, via captum's ``LayerGradCam``."""
    cam = LayerGradCam(model, model.get_submodule(GRADCAM_LAYER))
    out = []
    for i in range(0, len(images), batch):
        a = cam.attribute(images[i : i + batch], target=0, relu_attributions=True)
        out.append(LayerAttribution.interpolate(a, (CROP, CROP), interpolate_mode="bilinear").detach())
    return torch.cat(out)[:, 0].numpy()


def layercam(model: nn.Module, images: torch.Tensor, batch: int = 64) -> np.ndarray:
    """LayerCAM (Jiang et al. 2021): ``relu(sum_c relu(dy/dA_c) * A_c)`` at a shallow stage (stride 2)."""
    layer = model.get_submodule(LAYERCAM_LAYER)
    out = []
    for i in range(0, len(images), batch):
        y, act = _forward_with(model, layer, images[i : i + batch])
        (grad,) = torch.autograd.grad(y[:, 0].sum(), act)
        cam = torch.relu((torch.relu(grad) * act).sum(dim=1, keepdim=True))
        out.append(_up(cam).detach())
    return torch.cat(out)[:, 0].numpy()


@torch.no_grad()
def scorecam(model: nn.Module, images: torch.Tensor, batch: int = 64) -> np.ndarray:
    """Score-CAM (Wang et al. 2020): each activation map of a middle stage, scaled to 0-1, masks the input;
    the rise in lesion probability over a blank input weighs it (softmax over channels)."""
    layer = model.get_submodule(SCORECAM_LAYER)
    maps = []
    blank = torch.sigmoid(model(torch.zeros_like(images[:1])))[0, 0]
    for x in images:
        _, act = _forward_with(model, layer, x[None])
        a = _up(act.transpose(0, 1))  # (channels, 1, CROP, CROP)
        lo = a.amin(dim=(2, 3), keepdim=True)
        hi = a.amax(dim=(2, 3), keepdim=True)
        norm = (a - lo) / (hi - lo).clamp(min=1e-6)
        scores = torch.cat(
            [torch.sigmoid(model(x[None] * norm[j : j + batch]))[:, 0] for j in range(0, len(norm), batch)]
        )
        w = torch.softmax(scores - blank, dim=0)
        maps.append(torch.relu((w[:, None, None, None] * a).sum(dim=0))[0])
    return torch.stack(maps).numpy()


@torch.no_grad()
def rise(
    model: nn.Module,
    images: torch.Tensor,
    n_masks: int = 200,
    cells: int = 8,
    p: float = 0.5,
    seed: int = 0,
    batch: int = 100,
) -> np.ndarray:
    """RISE (Petsiuk et al. 2018): lesion probability under ``n_masks`` random smooth masks (``cells`` x
    ``cells`` grid, keep probability ``p``, randomly shifted), averaged with the masks as weights."""
    gen = torch.Generator().manual_seed(seed)
    cell = int(np.ceil(CROP / cells))
    grid = (torch.rand(n_masks, 1, cells, cells, generator=gen) < p).float()
    big = functional.interpolate(grid, size=((cells + 1) * cell,) * 2, mode="bilinear", align_corners=False)
    dy = torch.randint(0, cell, (n_masks,), generator=gen)
    dx = torch.randint(0, cell, (n_masks,), generator=gen)
    masks = torch.stack([big[k, :, dy[k] : dy[k] + CROP, dx[k] : dx[k] + CROP] for k in range(n_masks)])
    maps = []
    for x in images:
        s = torch.cat([torch.sigmoid(model(x[None] * masks[j : j + batch]))[:, 0] for j in range(0, n_masks, batch)])
        maps.append((s[:, None, None] * masks[:, 0]).sum(dim=0) / (n_masks * p))
    return torch.stack(maps).numpy()
