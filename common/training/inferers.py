"""Test-time augmentation for evaluation and inference: the network's logits averaged over the image and its
left-right mirror.

MONAI's ``TestTimeAugmentation`` draws random transforms to estimate uncertainty (and inverts them per
item); the SIIM-ACR winners' TTA is one deterministic horizontal flip, which is a one-line inferer.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer


class FlipTTAInferer(Inferer):
    """``network(x)`` averaged with ``flip(network(flip(x)))`` along the image's columns (left-right, the axis
    training flips: ``RandFlipd`` ``spatial_axis`` 1 of (C, rows, cols) images) when ``enabled``; else the
    plain forward pass (what ``SimpleInferer`` does). Logits are averaged, so the usual sigmoid follows."""

    def __init__(self, enabled: bool = True, spatial_axis: int = 1) -> None:
        super().__init__()
        self.enabled, self.dim = bool(enabled), spatial_axis + 2  # + batch and channel dimensions

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        logits = network(inputs, *args, **kwargs)
        if not self.enabled:
            return logits
        mirrored = network(torch.flip(inputs, dims=(self.dim,)), *args, **kwargs)
        return (logits + torch.flip(mirrored, dims=(self.dim,))) / 2
