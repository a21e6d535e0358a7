"""The multi-task wrapper around MONAI's UNet and the pre-training hand-off.

MONAI's 2D ``UNet`` is ``Sequential(down_0, SkipConnection(...), up_0)``: the nested
``SkipConnection`` holds every deeper level, so ``model[1](model[0](x))`` is exactly the decoder
feature map that the last block ``up_0`` (the segmentation head) turns into logits, and walking the
nested connections down to the innermost one gives the encoder bottleneck. Heads attach to those
two feature maps; the U-Net is referenced, never copied, and saving ``seg_net`` gives the plain
segmentation network's weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet
from torch import nn

from common.ssl.registry import SSLTask
from common.utils.checkpoints import CheckpointError, load_checkpoint


def seg_head_prefix(unet: UNet) -> str:
    """State-dict prefix of the segmentation head (the U-Net's last top-level block)."""
    return f"model.{len(unet.model) - 1}."


class MultiTaskUNet(nn.Module):
    """A segmentation U-Net plus training-only heads of auxiliary tasks.

    ``forward(x)`` is the plain segmentation network; ``forward(x, task=name)`` runs the part of the
    U-Net that task needs (the encoder only for bottleneck tasks) and its head. Going through
    ``forward`` keeps DistributedDataParallel's gradient hooks in play for every task.
    """

    def __init__(self, seg_net: UNet, tasks: Mapping[str, SSLTask]) -> None:
        super().__init__()
        if not isinstance(seg_net, UNet):
            raise TypeError(f"MultiTaskUNet wraps monai.networks.nets.UNet, got {type(seg_net).__name__}")
        self.seg_net = seg_net
        self.tasks = dict(tasks)
        channels = self._feature_channels()
        heads = {name: task.build_head(channels[task.feature]) for name, task in self.tasks.items()}
        self.heads = nn.ModuleDict(heads).to(self._device())  # beside the U-Net (the config moved it already)

    def _device(self) -> torch.device:
        return next(self.seg_net.parameters()).device

    def _down_path(self) -> tuple[list[nn.Module], nn.Module]:
        """The down blocks below the first level and the bottom block, walking the nested connections."""
        downs, node = [], self.seg_net.model[1]
        while isinstance(node, SkipConnection):
            inner = node.submodule
            if isinstance(inner, nn.Sequential) and len(inner) == 3 and isinstance(inner[1], SkipConnection):
                downs.append(inner[0])  # the down block of this level
                node = inner[1]
            else:
                return downs, inner  # the bottom block
        raise RuntimeError("unexpected UNet structure: no bottom block found")

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder path only: the deepest feature map of the U-Net."""
        downs, bottom = self._down_path()
        x = self.seg_net.model[0](x)
        for down in downs:
            x = down(x)
        return bottom(x)

    def decoder_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything but the segmentation head: the input of the U-Net's last block."""
        return self.seg_net.model[1](self.seg_net.model[0](x))

    def bottleneck_and_decoder(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both feature maps from one pass: the bottom block's output is caught by a forward hook."""
        caught: list[torch.Tensor] = []
        handle = self._down_path()[1].register_forward_hook(lambda _m, _i, out: caught.append(out))
        try:
            decoder = self.decoder_features(x)
        finally:
            handle.remove()
        return caught[0], decoder

    def features(self, x: torch.Tensor, kind: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The feature map(s) a task of ``kind`` (bottleneck, decoder or both) reads."""
        if kind == "bottleneck":
            return self.bottleneck(x)
        if kind == "decoder":
            return self.decoder_features(x)
        return self.bottleneck_and_decoder(x)

    def forward(self, x: torch.Tensor, task: str | None = None) -> torch.Tensor:
        if task is None:
            return self.seg_net(x)
        return self.heads[task](self.features(x, self.tasks[task].feature))

    def _feature_channels(self) -> dict[str, Any]:
        levels = len(self.seg_net.strides)
        size = 2 ** (levels + 1)
        probe = torch.zeros(1, self.seg_net.in_channels, *([size] * self.seg_net.dimensions), device=self._device())
        was_training = self.seg_net.training
        self.seg_net.eval()
        with torch.no_grad():
            channels = {
                "bottleneck": self.bottleneck(probe).shape[1],
                "decoder": self.decoder_features(probe).shape[1],
            }
        channels["both"] = (channels["bottleneck"], channels["decoder"])
        self.seg_net.train(was_training)
        return channels


def transfer_pretrained(seg_net: UNet, pretrained: Mapping[str, torch.Tensor]) -> list[str]:
    """Load every pre-trained U-Net weight except the segmentation head into ``seg_net``.

    The head keeps its fresh initialisation (pre-training never trains it). Raises if a shared
    weight is missing or has another shape; returns the names of the loaded tensors.
    """
    prefix = seg_head_prefix(seg_net)
    own = seg_net.state_dict()
    shared = {k: v for k, v in pretrained.items() if not k.startswith(prefix)}
    expected = {k for k in own if not k.startswith(prefix)}
    missing = sorted(expected - set(shared))
    if missing:
        raise KeyError(f"pre-trained weights lack {len(missing)} U-Net tensors, e.g. {missing[:3]}")
    wrong = [k for k in expected if tuple(shared[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"pre-trained weights have other shapes for {wrong[:3]}: another network_def?")
    seg_net.load_state_dict({**own, **{k: shared[k] for k in expected}})
    return sorted(expected)


def with_pretrained(seg_net: UNet, pretrained_file: str) -> UNet:
    """``seg_net`` with every pre-trained weight but the segmentation head loaded from ``pretrained_file``."""
    if not os.path.isfile(pretrained_file):
        raise FileNotFoundError(
            f"{pretrained_file} not found: run this bundle's configs/pretrain.json first "
            "(or configs/train.json, which pre-trains when the file is missing)"
        )
    try:
        pretrained = load_checkpoint(pretrained_file)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; delete it (configs/train.json pre-trains again when it is missing)") from e
    transfer_pretrained(seg_net, pretrained)
    return seg_net


def output_convolution(seg_net: UNet) -> nn.Module:
    """The convolution that produces the U-Net's logits: the last one of the segmentation head.

    In MONAI's UNet the head's final layer is ``conv_only`` (no norm or activation after it), inside a
    ``ResidualUnit`` when ``num_res_units > 0``, whose output adds its residual path: a bias there shifts
    every logit by the same amount.
    """
    convs = [m for m in seg_net.model[-1].modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not convs or convs[-1].bias is None or convs[-1].out_channels != seg_net.out_channels:
        raise ValueError("the U-Net's segmentation head does not end in a biased convolution to its output channels")
    return convs[-1]


def with_output_prior(seg_net: UNet, prior: Any) -> UNet:
    """``seg_net`` whose logits start near ``logit(prior)``: the output convolution's bias is set to it.

    The focal loss paper's prior initialisation (Lin et al. 2017, section 4.1) for rare foreground: a fresh
    U-Net starts at probability 0.5 everywhere and, with Adam moving each bias by about the learning rate
    per step, a few hundred steps do not reach the background rate of a small lesion, so every pixel stays
    near 0.5 (measured on SIIM-ACR: logits -0.04 to -0.25 after 480 steps). ``prior`` off
    (``common.data.sampling.OFF``, e.g. "off") keeps PyTorch's initialisation. Pre-trained weights never
    touch the head (``transfer_pretrained``), so the prior survives them. torch and MONAI have no such
    initialiser, hence this function.
    """
    from common.data.sampling import rate_setting

    rate = rate_setting(prior)
    if rate is None:
        return seg_net
    if not 0.0 < rate < 1.0:
        raise ValueError(f"output_prior must be in (0, 1) or off, got {prior!r}")
    with torch.no_grad():
        output_convolution(seg_net).bias.fill_(float(torch.logit(torch.tensor(rate, dtype=torch.float64))))
    return seg_net
