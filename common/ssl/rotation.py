"""Rotation prediction (Gidaris et al. 2018): rotate by k*90 degrees, predict k from the bottleneck."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.ssl.registry import Pretext, SSLTask, pooled_mlp, randint, register_task


@register_task
class RotationTask(SSLTask):
    """Input: the image rotated by k*90 degrees (k in 0..3); target: k; head: pooled MLP; loss: CE."""

    name = "rotation"
    feature = "bottleneck"

    def __init__(self, hidden: int = 128) -> None:
        self.hidden = hidden

    def pretext(self, images: torch.Tensor, generator: torch.Generator) -> Pretext:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"rotation needs square images, got {tuple(images.shape[-2:])}")
        k = randint(4, (images.shape[0],), generator, images.device)
        rotated = torch.empty_like(images)
        for quarter in range(4):  # one rot90 per distinct k instead of one per image
            idx = (k == quarter).nonzero(as_tuple=True)[0]
            if idx.numel():
                rotated[idx] = torch.rot90(images[idx], quarter, dims=(-2, -1))
        return Pretext(input=rotated, target=k)

    def build_head(self, channels: int) -> nn.Module:
        return pooled_mlp(channels, self.hidden, 4)

    def loss(self, prediction: torch.Tensor, pretext: Pretext) -> torch.Tensor:
        return F.cross_entropy(prediction, pretext.target)
