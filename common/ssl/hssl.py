"""Hierarchical self-supervised learning (HSSL; Zheng et al., MICCAI 2021) as an auxiliary task.

Images of several datasets ("domains") and modality groups (X-ray, CT, MR, US, other) are learned
at three levels: the image (NT-Xent between two views of one image), the dataset it came from and
its modality group (cross-entropy on pooled bottleneck features). HSSL pre-trains the whole
encoder-decoder; the paper leaves the decoder's objective open, so we add a dense term: each view
has a random box in-painted with noise and the decoder restores the clean view (L1 inside the box
plus 0.1 x L1 elsewhere, as our context-restoration task), so fine-tuning starts from a trained
decoder too. All four weights are options (``term_weights``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.losses import ContrastiveLoss
from torch import nn

from common.ssl.contrastive import random_views
from common.ssl.genesis import paint
from common.ssl.registry import Pretext, SSLTask, pooled_mlp, register_task, restoration_head

DEFAULT_TERM_WEIGHTS = {"contrastive": 1.0, "domain": 1.0, "group": 1.0, "dense": 1.0}


class HSSLHead(nn.Module):
    """Projection, dataset and group classifiers on the pooled bottleneck; restoration on the decoder."""

    def __init__(self, channels: tuple[int, int], n_domains: int, n_groups: int, hidden: int, projection: int) -> None:
        super().__init__()
        bottleneck, decoder = channels
        self.projection = pooled_mlp(bottleneck, hidden, projection)
        self.domain = pooled_mlp(bottleneck, hidden, n_domains)
        self.group = pooled_mlp(bottleneck, hidden, n_groups)
        self.restore = restoration_head(decoder)

    def forward(self, features: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        bottleneck, decoder = features
        return {
            "projection": self.projection(bottleneck),
            "domain": self.domain(bottleneck),
            "group": self.group(bottleneck),
            "restored": self.restore(decoder),
        }


def restoration_l1(restored: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, outside: float) -> torch.Tensor:
    """L1 inside ``mask`` plus ``outside`` times L1 elsewhere (each a mean over its pixels)."""
    error = (restored - target).abs()
    m = mask.to(error.dtype).expand_as(error)
    inside_mean = (error * m).sum() / m.sum().clamp_min(1.0)
    outside_mean = (error * (1 - m)).sum() / (1 - m).sum().clamp_min(1.0)
    return inside_mean + outside * outside_mean


@register_task
class HSSLTask(SSLTask):
    """Input: two views per image (random crop/flip/rotation/intensity, a box in-painted with noise);
    heads: projection + dataset + group classifiers (bottleneck) and restoration (decoder); loss:
    NT-Xent + CE(dataset) + CE(group) + L1 restoration, weighted by ``term_weights``."""

    name = "hssl"
    in_multitask = False
    feature = "both"
    label_keys = ("domain_index", "group_index")

    def __init__(
        self,
        n_domains: int,
        n_groups: int = 5,
        temperature: float = 0.2,
        hidden: int = 256,
        projection: int = 128,
        term_weights: Mapping[str, float] | None = None,
        outside_weight: float = 0.1,
    ) -> None:
        if n_domains < 1 or n_groups < 1:
            raise ValueError(f"hssl needs at least one domain and one group, got {n_domains} and {n_groups}")
        weights = {**DEFAULT_TERM_WEIGHTS, **(term_weights or {})}
        unknown = set(weights) - set(DEFAULT_TERM_WEIGHTS)
        if unknown:
            raise KeyError(f"unknown hssl terms {sorted(unknown)}; known: {sorted(DEFAULT_TERM_WEIGHTS)}")
        self.n_domains, self.n_groups, self.hidden, self.projection = n_domains, n_groups, hidden, projection
        self.term_weights, self.outside_weight = weights, outside_weight
        self.nt_xent = ContrastiveLoss(temperature=temperature)
        self.last_terms: dict[str, torch.Tensor] = {}

    def pretext(
        self, images: torch.Tensor, generator: torch.Generator, labels: Mapping[str, torch.Tensor] | None = None
    ) -> Pretext:
        if labels is None:
            raise ValueError("hssl needs the images' domain_index and group_index labels")
        views = torch.cat([random_views(images, generator), random_views(images, generator)])
        no_outer = torch.zeros(views.shape[0], dtype=torch.bool, device=views.device)
        painted = paint(views, generator, outer=no_outer)
        pair = {k.removesuffix("_index"): torch.cat([v, v]) for k, v in labels.items()}
        return Pretext(input=painted, target=views, mask=(painted != views).any(1, keepdim=True), labels=pair)

    def build_head(self, channels: tuple[int, int]) -> nn.Module:
        return HSSLHead(channels, self.n_domains, self.n_groups, self.hidden, self.projection)

    def loss(self, prediction: Mapping[str, torch.Tensor], pretext: Pretext) -> torch.Tensor:
        first, second = prediction["projection"].chunk(2)
        terms = {
            "contrastive": self.nt_xent(first, second),
            "domain": F.cross_entropy(prediction["domain"].float(), pretext.labels["domain"]),
            "group": F.cross_entropy(prediction["group"].float(), pretext.labels["group"]),
            "dense": restoration_l1(prediction["restored"], pretext.target, pretext.mask, self.outside_weight),
        }
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        return sum(self.term_weights[k] * v for k, v in terms.items())
