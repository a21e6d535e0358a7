"""Jigsaw puzzles (Noroozi & Favaro 2016): permute a g x g grid of tiles, predict which permutation."""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.ssl.registry import Pretext, SSLTask, randint, register_task


@lru_cache(maxsize=8)
def max_hamming_permutations(n_tiles: int, n_permutations: int, seed: int = 0) -> np.ndarray:
    """A fixed, seeded set of permutations far apart in Hamming distance (greedy max-min selection).

    Starts from the identity and repeatedly adds the permutation whose smallest Hamming distance to
    the chosen ones is largest (ties broken by a seeded shuffle), as in Noroozi & Favaro.
    """
    all_perms = np.array(list(itertools.permutations(range(n_tiles))), dtype=np.int8)
    if n_permutations > len(all_perms):
        raise ValueError(f"only {len(all_perms)} permutations of {n_tiles} tiles exist")
    rng = np.random.default_rng(seed)
    all_perms = all_perms[rng.permutation(len(all_perms))]
    chosen = [int(np.flatnonzero((all_perms == np.arange(n_tiles)).all(1))[0])]
    min_dist = (all_perms != all_perms[chosen[0]]).sum(1)
    for _ in range(n_permutations - 1):
        nxt = int(np.argmax(min_dist))
        chosen.append(nxt)
        min_dist = np.minimum(min_dist, (all_perms != all_perms[nxt]).sum(1))
    return all_perms[chosen].astype(np.int64)


def _tiles(images: torch.Tensor, grid: int) -> tuple[torch.Tensor, int]:
    b, c, h, w = images.shape
    t = min(h, w) // grid
    tiles = images[:, :, : grid * t, : grid * t].reshape(b, c, grid, t, grid, t).permute(0, 1, 2, 4, 3, 5)
    return tiles.reshape(b, c, grid * grid, t, t), t


def _assemble(images: torch.Tensor, tiles: torch.Tensor, grid: int, t: int) -> torch.Tensor:
    b, c = images.shape[:2]
    out = images.clone()  # the border beyond grid*t (when the size is not divisible) stays as it was
    out[:, :, : grid * t, : grid * t] = (
        tiles.reshape(b, c, grid, grid, t, t).permute(0, 1, 2, 4, 3, 5).reshape(b, c, grid * t, grid * t)
    )
    return out


def permute_tiles(images: torch.Tensor, permutations: torch.Tensor, grid: int) -> torch.Tensor:
    """Tile ``i`` of the output is tile ``permutations[b, i]`` of the input, per image ``b``."""
    tiles, t = _tiles(images, grid)
    index = permutations.to(images.device)[:, None, :, None, None].expand(-1, tiles.shape[1], -1, t, t)
    return _assemble(images, torch.gather(tiles, 2, index), grid, t)


@register_task
class JigsawTask(SSLTask):
    """Input: tiles shuffled by one of P fixed permutations; target: its index; head: bottleneck pooled to
    the g x g grid, then an MLP; loss: CE."""

    name = "jigsaw"
    feature = "bottleneck"

    def __init__(self, grid: int = 3, n_permutations: int = 24, seed: int = 0, hidden: int = 256) -> None:
        self.grid, self.hidden = grid, hidden
        self.permutations = torch.from_numpy(max_hamming_permutations(grid * grid, n_permutations, seed))

    def pretext(self, images: torch.Tensor, generator: torch.Generator) -> Pretext:
        label = randint(len(self.permutations), (images.shape[0],), generator, images.device)
        perms = self.permutations.to(images.device)[label]
        return Pretext(input=permute_tiles(images, perms, self.grid), target=label)

    def unpermute(self, shuffled: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Undo ``pretext``: put every tile back (used to check correctness)."""
        inverse = torch.argsort(self.permutations.to(shuffled.device)[label], dim=1)
        return permute_tiles(shuffled, inverse, self.grid)

    def build_head(self, channels: int) -> nn.Module:
        # pooled to the puzzle's grid, not to 1x1: which tile sits where is the whole task
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(self.grid),
            nn.Flatten(),
            nn.Linear(channels * self.grid * self.grid, self.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden, len(self.permutations)),
        )

    def loss(self, prediction: torch.Tensor, pretext: Pretext) -> torch.Tensor:
        return F.cross_entropy(prediction, pretext.target)
