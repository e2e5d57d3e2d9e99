"""The three networks of the weakly supervised lesion model, all from MONAI.

- classifier: four :class:`monai.networks.blocks.Convolution` blocks (convolution, batch norm, ReLU) with
  max-pooling between and a global max-pooling head on ``(1, CROP, CROP)`` liver slices, one logit
  ("lesion"), dropout kept for Monte Carlo samples;
- generator: :class:`monai.networks.nets.UNet` and a 1x1 head (zero at first) predicting a bounded, smoothed
  residual (``RESIDUAL_MAX * tanh``, then a small Gaussian) that :class:`Counterfactual` adds to the input and
  clips to 0-1, so that the graph's output is the counterfactual image itself;
- discriminator: :class:`monai.networks.nets.Discriminator` (least-squares GAN, no final sigmoid) on
  real normal slices versus counterfactuals.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import Discriminator, UNet
from torch import nn

from inference.weak.slices import CROP

CLASSIFIER_CHANNELS = (16, 32, 64, 64)
GENERATOR_CHANNELS = (16, 32, 64, 128)
DROPOUT = 0.1
#: largest change (0-1 intensities) the generator may make to a pixel: the lesions' contrast is 60-100 HU
#: (0.3-0.5 of the window), so a lesion can be filled in but the image cannot be rewritten
RESIDUAL_MAX = 0.6
#: standard deviation (pixels) of the Gaussian that smooths the generator's change: a stripe or checkerboard
#: pattern of 2-3 pixels, the classifier-flipping texture an unsmoothed generator paints into a lesion instead
#: of filling it, cannot pass it, a filled-in lesion loses a pixel of its edge
RESIDUAL_SIGMA = 1.0


class LesionClassifier(nn.Module):
    """``(B, 1, CROP, CROP)`` -> logits ``(B, 1)``: stages ``net.layer_0`` ... ``net.layer_3`` (max-pooling
    by 2 before each but the first, then a MONAI convolution block with batch norm and ReLU), dropout, and a
    global max-pooling head: "a lesion somewhere in the liver", the same wherever it lies."""

    def __init__(self, channels: tuple[int, ...] = CLASSIFIER_CHANNELS, dropout: float = DROPOUT):
        super().__init__()
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        c_in = 1
        for i, c in enumerate(channels):
            block = Convolution(2, c_in, c, kernel_size=3, act="relu", norm="batch")
            stages[f"layer_{i}"] = block if i == 0 else nn.Sequential(nn.MaxPool2d(2), block)
            c_in = c
        self.net = nn.Sequential(stages)
        self.final = nn.Sequential(nn.Dropout(dropout), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c_in, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.net(x))


def classifier() -> nn.Module:
    """A fresh lesion classifier (:class:`LesionClassifier`).

    Batch norm rather than MONAI's default instance norm: on liver-masked slices a lesion's contrast against
    the liver is the signal, and instance norm rescales it per slice (measured on 60/16 subjects, 600 steps:
    validation AUC 0.90 for lesions of 50 px or more with batch norm against 0.61 with instance norm).
    """
    return LesionClassifier()


class Counterfactual(nn.Module):
    """``x -> clip(x + G * RESIDUAL_MAX * tanh(UNet(x)), 0, 1)``, ``G *`` the Gaussian of
    :data:`RESIDUAL_SIGMA`: the image with whatever the classifier calls a lesion inpainted. The bound keeps a
    counterfactual within the window and within a lesion's contrast of the image. The change is not cut to
    the liver region here: a hypodense lesion's darkest pixels lie below the window, 0 like the outside of the
    region in the network input; training keeps the change inside the region
    (:func:`inference.weak.training.train_generator`) and the mask is taken inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = UNet(2, 1, 8, channels=GENERATOR_CHANNELS, strides=(2, 2, 2), num_res_units=1)
        self.head = nn.Conv2d(8, 1, kernel_size=1)
        nn.init.zeros_(self.head.weight)  # starts as the identity: the counterfactual begins as the image itself
        nn.init.zeros_(self.head.bias)  # type: ignore[arg-type]
        r = torch.arange(-2, 3, dtype=torch.float32)
        g = torch.exp(-(r**2) / (2 * RESIDUAL_SIGMA**2))
        kernel = torch.outer(g, g) / g.sum() ** 2
        self.smooth: torch.Tensor
        self.register_buffer("smooth", kernel[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.change(x).add(x).clamp(0.0, 1.0)

    def change(self, x: torch.Tensor) -> torch.Tensor:
        """The residual before clipping, ``(B, 1, CROP, CROP)``, at most RESIDUAL_MAX."""
        r = RESIDUAL_MAX * torch.tanh(self.head(self.net(x)))
        return nn.functional.conv2d(r, self.smooth, padding=2)


def discriminator() -> nn.Module:
    """Real-normal-slice critic: ``(B, 1, CROP, CROP)`` -> scores ``(B, 1)``."""
    return Discriminator((1, CROP, CROP), (16, 32, 64, 64), (2, 2, 2, 2), num_res_units=1, dropout=0.0, last_act=None)


def layer_of(model: nn.Module, name: str) -> nn.Module:
    """A classifier layer by name (``net.layer_3``) for the CAM baselines."""
    return model.get_submodule(name)
