"""Non-overlapping square cells of an image batch: the pretexts that corrupt windows (Models Genesis' local
shuffle, context restoration's patch swaps) change them all at once with one gather and one scatter over the
whole batch, instead of a Python loop over images and windows."""

from __future__ import annotations

import torch

from common.ssl.registry import randint, uniform


def grid_cells(images: torch.Tensor, side: int, generator: torch.Generator) -> tuple[torch.Tensor, tuple[int, int]]:
    """``images`` cut into ``side`` x ``side`` cells of a grid at a random offset (one per batch):
    ``(b, cells, c, side * side)``, and the offset. The cells do not overlap, so a pretext can change any of
    them at once (gather / scatter on the whole batch) instead of looping over images and windows."""
    b, c, h, w = images.shape
    gh, gw = h // side, w // side
    offset = (
        randint((h - gh * side) + 1, (1,), generator, images.device),
        randint((w - gw * side) + 1, (1,), generator, images.device),
    )
    oy, ox = int(offset[0]), int(offset[1])
    region = images[:, :, oy : oy + gh * side, ox : ox + gw * side]
    cells = region.reshape(b, c, gh, side, gw, side).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, side * side)
    return cells, (oy, ox)


def from_grid_cells(images: torch.Tensor, cells: torch.Tensor, side: int, offset: tuple[int, int]) -> torch.Tensor:
    """A copy of ``images`` with the region of ``grid_cells`` replaced by ``cells`` (its inverse)."""
    b, c, h, w = images.shape
    gh, gw = h // side, w // side
    oy, ox = offset
    region = cells.reshape(b, gh, gw, c, side, side).permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * side, gw * side)
    out = images.clone()
    out[:, :, oy : oy + gh * side, ox : ox + gw * side] = region
    return out


def pick_cells(n_cells: int, n: int, batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` distinct cell indices per image, ``(batch, n)``, drawn uniformly without replacement."""
    if n > n_cells:
        raise ValueError(f"{n} distinct cells asked of a grid of {n_cells}")
    return torch.argsort(uniform((batch, n_cells), generator, device), dim=1)[:, :n]
