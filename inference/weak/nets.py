"""The three networks of the weakly supervised lesion model, all from MONAI.

- classifier: :class:`monai.networks.nets.Classifier` on ``(1, CROP, CROP)`` liver slices, one logit
  ("lesion"), dropout kept for Monte Carlo samples;
- generator: :class:`monai.networks.nets.UNet` and a 1x1 head (zero at first) predicting a residual;
  :class:`Counterfactual` adds it to the input, so that the graph's output is the counterfactual image itself;
- discriminator: :class:`monai.networks.nets.Discriminator` (least-squares GAN, no final sigmoid) on
  real normal slices versus counterfactuals.
"""

from __future__ import annotations

import torch
from monai.networks.nets import Classifier, Discriminator, UNet
from torch import nn

from inference.weak.slices import CROP

CLASSIFIER_CHANNELS = (16, 32, 64, 64)
GENERATOR_CHANNELS = (16, 32, 64, 128)
DROPOUT = 0.1


def classifier() -> nn.Module:
    """A fresh lesion classifier: ``(B, 1, CROP, CROP)`` -> logits ``(B, 1)``.

    MONAI's :class:`~monai.networks.nets.Classifier` convolution stack (stride 8 at the end, dropout kept for
    Monte Carlo samples) with a global max-pooling head instead of its flatten + linear layer: "a lesion
    somewhere in the slice", the same wherever it lies, so that the network learns what a lesion looks like
    rather than where a subject's anatomy is (the flatten head did not learn a toy set under flips and shifts).
    """
    model = Classifier((1, CROP, CROP), 1, CLASSIFIER_CHANNELS, (2, 2, 2, 1), num_res_units=1, dropout=DROPOUT)
    model.final = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(CLASSIFIER_CHANNELS[-1], 1))
    return model


class Counterfactual(nn.Module):
    """``x -> x + UNet(x)``: the image with whatever the classifier calls a lesion inpainted."""

    def __init__(self) -> None:
        super().__init__()
        self.net = UNet(2, 1, 8, channels=GENERATOR_CHANNELS, strides=(2, 2, 2), num_res_units=1)
        self.head = nn.Conv2d(8, 1, kernel_size=1)
        nn.init.zeros_(self.head.weight)  # starts as the identity: the counterfactual begins as the image itself
        nn.init.zeros_(self.head.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.head(self.net(x))


def discriminator() -> nn.Module:
    """Real-normal-slice critic: ``(B, 1, CROP, CROP)`` -> scores ``(B, 1)``."""
    return Discriminator((1, CROP, CROP), (16, 32, 64, 64), (2, 2, 2, 2), num_res_units=1, dropout=0.0, last_act=None)


def layer_of(model: nn.Module, name: str) -> nn.Module:
    """A classifier layer by name (``net.layer_3``) for the CAM baselines."""
    return model.get_submodule(name)
