"""The segmentation network: a MONAI UNet with dropout, and its always-dropout twin for MC sampling."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet
from torch import nn

from inference.model_card import NetworkSpec


def build_unet(spec: NetworkSpec, spatial_dims: int, out_channels: int) -> UNet:
    """A MONAI UNet (instance norm, PReLU, dropout ``spec.dropout`` after every convolution).

    Instance norm keeps no running statistics, so the network computes the same function in train and
    eval mode apart from dropout; that is what lets the MC-dropout graph be the trained network with
    dropout left on.
    """
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=out_channels,
        channels=spec.channels,
        strides=spec.strides,
        num_res_units=spec.num_res_units,
        norm="instance",
        dropout=spec.dropout,
    )


class AlwaysDropout(nn.Module):
    """Dropout that applies in eval mode too (exported as a random mask, not removed)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(x, self.p, training=True)


def with_dropout_always_on(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Dropout`` of ``model`` (in place) by :class:`AlwaysDropout`; returns ``model``."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Dropout):
            setattr(model, name, AlwaysDropout(child.p))
        else:
            with_dropout_always_on(child)
    return model
