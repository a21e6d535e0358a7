"""SimCLR-style contrastive learning (Chen et al. 2020): two augmented views of each image, NT-Xent
(MONAI's ContrastiveLoss) on a 2-layer projection of the pooled bottleneck."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import ContrastiveLoss
from torch import nn

from common.ssl.registry import Pretext, SSLTask, pooled_mlp, register_task, uniform


def random_views(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random view per image on its device: resized crop (scale 0.5-1), flip, small rotation,
    contrast/brightness jitter and Gaussian noise, done for the whole batch with one grid_sample."""
    b, dev = images.shape[0], images.device
    r = uniform((b, 7), generator, dev)
    scale = torch.sqrt(0.5 + 0.5 * r[:, 0])  # side of the crop, as a fraction
    angle = (r[:, 1] - 0.5) * (math.pi / 9)  # +-10 degrees
    flip = torch.where(r[:, 2] < 0.5, -1.0, 1.0)
    shift = (r[:, 3:5] * 2 - 1) * (1 - scale)[:, None]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    contrast = (0.7 + 0.6 * r[:, 5])[:, None, None, None]
    brightness = ((r[:, 6] - 0.5) * 0.2)[:, None, None, None]
    mean = views.mean(dim=(-2, -1), keepdim=True)
    views = (views - mean) * contrast + mean + brightness
    noise = torch.randn(views.shape, generator=generator, device=dev) * 0.02
    return views + noise


@register_task
class ContrastiveTask(SSLTask):
    """Input: two views per image (first half view 1, second half view 2); head: pooled 2-layer
    projection; loss: NT-Xent between the two views of each image against all others in the batch."""

    name = "contrastive"
    feature = "bottleneck"

    def __init__(self, temperature: float = 0.2, hidden: int = 256, projection: int = 128) -> None:
        self.hidden, self.projection = hidden, projection
        self.nt_xent = ContrastiveLoss(temperature=temperature)

    def pretext(self, images: torch.Tensor, generator: torch.Generator) -> Pretext:
        return Pretext(input=torch.cat([random_views(images, generator), random_views(images, generator)]))

    def build_head(self, channels: int) -> nn.Module:
        return pooled_mlp(channels, self.hidden, self.projection)

    def loss(self, prediction: torch.Tensor, pretext: Pretext) -> torch.Tensor:
        first, second = prediction.chunk(2)
        return self.nt_xent(first, second)
