"""Models Genesis (Zhou et al. 2019) in 2D: restore the image from non-linear intensity, local shuffle
and in-/out-painting corruptions with the whole encoder-decoder; MSE on the whole image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.ssl.grid import from_grid_cells, grid_cells, pick_cells
from common.ssl.registry import (
    Pretext,
    SSLTask,
    register_task,
    restoration_head,
    uniform,
)


def bezier_intensity_map(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per image, map intensities through a random monotone-ends cubic Bezier curve from (0,0) to (1,1)."""
    b = images.shape[0]
    dev = images.device
    t = torch.linspace(0, 1, 256, device=dev)
    p1, p2 = uniform((b, 2), generator, dev), uniform((b, 2), generator, dev)
    coeff = torch.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3])  # (4, 256)
    xs = coeff[1] * p1[:, :1] + coeff[2] * p2[:, :1] + coeff[3]  # (b, 256), from 0 to 1
    ys = coeff[1] * p1[:, 1:] + coeff[2] * p2[:, 1:] + coeff[3]
    xs, order = torch.sort(xs, dim=1)
    ys = torch.gather(ys, 1, order)
    flat = images.reshape(b, -1).clamp(0, 1).contiguous()
    idx = torch.searchsorted(xs.contiguous(), flat).clamp(1, xs.shape[1] - 1)
    x0, x1 = torch.gather(xs, 1, idx - 1), torch.gather(xs, 1, idx)
    y0, y1 = torch.gather(ys, 1, idx - 1), torch.gather(ys, 1, idx)
    w = ((flat - x0) / (x1 - x0).clamp_min(1e-6)).clamp(0, 1)
    return (y0 + w * (y1 - y0)).reshape(images.shape)


def local_pixel_shuffle(images: torch.Tensor, generator: torch.Generator, n_blocks: int, block: int) -> torch.Tensor:
    """Shuffle the pixels inside ``n_blocks`` small windows per image: distinct cells of a ``block``-sized
    grid at a random offset (all images and windows at once: one gather, one scatter)."""
    b, c = images.shape[:2]
    cells, offset = grid_cells(images, block, generator)
    n = min(n_blocks, cells.shape[1])
    chosen = pick_cells(cells.shape[1], n, b, generator, images.device)[:, :, None, None].expand(-1, -1, c, block**2)
    order = torch.argsort(uniform((b, n, 1, block**2), generator, images.device), dim=3).expand(-1, -1, c, -1)
    shuffled = torch.gather(torch.gather(cells, 1, chosen), 3, order)
    return from_grid_cells(images, cells.scatter(1, chosen, shuffled), block, offset)


def paint(images: torch.Tensor, generator: torch.Generator, outer: torch.Tensor) -> torch.Tensor:
    """In-painting (boxes filled with noise) where ``outer`` is False, out-painting (all but a box) where True."""
    b, _, h, w = images.shape
    dev = images.device
    out = images.clone()
    sizes = (uniform((b, 2), generator, dev) * 0.3 + 0.2) * torch.tensor([h, w], device=dev)
    corners = uniform((b, 2), generator, dev) * (torch.tensor([h, w], device=dev) - sizes)
    noise = uniform(tuple(images.shape), generator, dev)
    yy = torch.arange(h, device=dev)[None, :, None]
    xx = torch.arange(w, device=dev)[None, None, :]
    inside = (
        (yy >= corners[:, 0, None, None])
        & (yy < (corners[:, 0] + sizes[:, 0])[:, None, None])
        & (xx >= corners[:, 1, None, None])
        & (xx < (corners[:, 1] + sizes[:, 1])[:, None, None])
    )[:, None]
    fill = torch.where(outer[:, None, None, None], ~inside, inside)
    return torch.where(fill, noise, out)


@register_task
class GenesisTask(SSLTask):
    """Input: Models Genesis corruptions; target: the original; head: decoder restoration; loss: MSE."""

    name = "genesis"
    default_weight = 1.0
    feature = "decoder"

    def __init__(
        self,
        nonlinear_prob: float = 0.9,
        shuffle_prob: float = 0.5,
        paint_prob: float = 0.9,
        outpaint_share: float = 0.2,
        shuffle_blocks: int = 32,
        shuffle_block_fraction: float = 0.04,
    ) -> None:
        self.nonlinear_prob, self.shuffle_prob, self.paint_prob = nonlinear_prob, shuffle_prob, paint_prob
        self.outpaint_share = outpaint_share
        self.shuffle_blocks, self.shuffle_block_fraction = shuffle_blocks, shuffle_block_fraction

    def pretext(self, images: torch.Tensor, generator: torch.Generator) -> Pretext:
        b, dev = images.shape[0], images.device
        x = images
        draws = uniform((b, 4), generator, dev)
        x = torch.where((draws[:, 0] < self.nonlinear_prob)[:, None, None, None], bezier_intensity_map(x, generator), x)
        block = max(2, int(self.shuffle_block_fraction * min(images.shape[-2:])))
        shuffled = local_pixel_shuffle(x, generator, self.shuffle_blocks, block)
        x = torch.where((draws[:, 1] < self.shuffle_prob)[:, None, None, None], shuffled, x)
        painted = paint(x, generator, outer=draws[:, 3] < self.outpaint_share)
        x = torch.where((draws[:, 2] < self.paint_prob)[:, None, None, None], painted, x)
        return Pretext(input=x, target=images, mask=(x != images).any(1, keepdim=True))

    def build_head(self, channels: int) -> nn.Module:
        return restoration_head(channels)

    def loss(self, prediction: torch.Tensor, pretext: Pretext) -> torch.Tensor:
        return F.mse_loss(prediction, pretext.target)
