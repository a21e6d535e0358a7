"""Context restoration (Chen et al. 2019): swap random patch pairs, restore the original from the decoder."""

from __future__ import annotations

import torch
from torch import nn

from common.ssl.registry import Pretext, SSLTask, randint, register_task, restoration_head


def swap_patches(
    images: torch.Tensor, generator: torch.Generator, n_pairs: int, size_fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap ``n_pairs`` pairs of square patches per image; return the result and the changed-pixel mask."""
    b, _, h, w = images.shape
    side = max(2, round(size_fraction * min(h, w)))
    out, mask = images.clone(), torch.zeros_like(images[:, :1], dtype=torch.bool)
    ys = randint(h - side + 1, (b, n_pairs, 2), generator, images.device).tolist()
    xs = randint(w - side + 1, (b, n_pairs, 2), generator, images.device).tolist()
    for i in range(b):
        for (y1, y2), (x1, x2) in zip(ys[i], xs[i], strict=True):
            a = out[i, :, y1 : y1 + side, x1 : x1 + side].clone()
            out[i, :, y1 : y1 + side, x1 : x1 + side] = out[i, :, y2 : y2 + side, x2 : x2 + side]
            out[i, :, y2 : y2 + side, x2 : x2 + side] = a
            mask[i, :, y1 : y1 + side, x1 : x1 + side] = True
            mask[i, :, y2 : y2 + side, x2 : x2 + side] = True
    return out, mask


@register_task
class InpaintingTask(SSLTask):
    """Input: the image with patch pairs swapped; target: the original; head: decoder restoration; loss: L1
    on the swapped region (plus ``outside_weight`` times L1 elsewhere, so the output stays an image)."""

    name = "inpainting"
    default_weight = 1.0
    feature = "decoder"

    def __init__(self, n_pairs: int = 4, size_fraction: float = 0.12, outside_weight: float = 0.1) -> None:
        self.n_pairs, self.size_fraction, self.outside_weight = n_pairs, size_fraction, outside_weight

    def pretext(self, images: torch.Tensor, generator: torch.Generator) -> Pretext:
        corrupted, mask = swap_patches(images, generator, self.n_pairs, self.size_fraction)
        return Pretext(input=corrupted, target=images, mask=mask)

    def build_head(self, channels: int) -> nn.Module:
        return restoration_head(channels)

    def loss(self, prediction: torch.Tensor, pretext: Pretext) -> torch.Tensor:
        error = (prediction - pretext.target).abs()
        mask = pretext.mask.to(error.dtype).expand_as(error)
        inside = (error * mask).sum() / mask.sum().clamp_min(1.0)
        outside = (error * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1.0)
        return inside + self.outside_weight * outside
