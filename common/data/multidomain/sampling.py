"""Drawing every domain equally often from a multi-domain aggregate."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch

# ----------------------------------------------------------------------------- sampling


def domain_balanced_weights(items: Sequence[Mapping[str, Any]]) -> list[float]:
    """Per-item weight 1 / (items of its domain): every domain is drawn equally often."""
    counts = Counter(it["domain"] for it in items)
    return [1.0 / counts[it["domain"]] for it in items]


def balanced_sampler(
    items: Sequence[Mapping[str, Any]], num_samples: int | None = None, seed: int = 0
) -> torch.utils.data.WeightedRandomSampler:
    """A seeded ``WeightedRandomSampler`` (with replacement) over ``items`` with domain-balanced weights."""
    if not items:
        raise ValueError("cannot sample from an empty item list")
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(
        domain_balanced_weights(items), num_samples or len(items), replacement=True, generator=generator
    )
