"""Context restoration (Chen et al. 2019): swap random patch pairs, restore the original from the decoder."""

from __future__ import annotations

import torch
from torch import nn

from common.ssl.grid import from_grid_cells, grid_cells, pick_cells
from common.ssl.registry import Pretext, SSLTask, register_task, restoration_head


def swap_patches(
    images: torch.Tensor, generator: torch.Generator, n_pairs: int, size_fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap ``n_pairs`` pairs of square patches per image; return the result and the changed-pixel mask.

    The patches are distinct cells of a grid at a random offset, so the whole batch swaps at once (one
    gather, one scatter; no loop over images and pairs)."""
    b, c, h, w = images.shape
    side = max(2, round(size_fraction * min(h, w)))
    cells, offset = grid_cells(images, side, generator)
    n_pairs = min(n_pairs, cells.shape[1] // 2)
    picked = pick_cells(cells.shape[1], 2 * n_pairs, b, generator, images.device)
    partner = torch.cat([picked[:, n_pairs:], picked[:, :n_pairs]], dim=1)  # cell k <- cell k + n_pairs, and back
    index = picked[:, :, None, None].expand(-1, -1, c, side * side)
    moved = torch.gather(cells, 1, partner[:, :, None, None].expand(-1, -1, c, side * side))
    out = from_grid_cells(images, cells.scatter(1, index, moved), side, offset)
    marks = torch.zeros_like(cells[:, :, :1], dtype=torch.bool).scatter(1, index[:, :, :1], True)
    mask = from_grid_cells(torch.zeros_like(images[:, :1], dtype=torch.bool), marks, side, offset)
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
