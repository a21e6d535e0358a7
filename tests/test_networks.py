"""The pre-training hand-off: shared weights transferred exactly, segmentation head fresh."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet

from common.ssl import create_task
from common.training.networks import MultiTaskUNet, seg_head_prefix, transfer_pretrained


def _unet(seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet(2, 1, 1, (8, 16, 32), (2, 2), num_res_units=1, norm="batch")


def test_transfer_copies_encoder_and_decoder_and_keeps_the_fresh_head() -> None:
    pretrained = MultiTaskUNet(_unet(0), {"genesis": create_task("genesis")})
    with torch.no_grad():  # stand-in for pre-training: every U-Net weight moves
        for p in pretrained.seg_net.parameters():
            p.add_(1.0)
    fresh = _unet(1)
    head_before = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith(seg_head_prefix(fresh))}
    loaded = transfer_pretrained(fresh, pretrained.seg_net.state_dict())
    after = fresh.state_dict()
    source = pretrained.seg_net.state_dict()
    assert loaded and all(not k.startswith("model.2.") for k in loaded)
    for k in loaded:
        assert torch.equal(after[k], source[k]), k
    encoder_keys = [k for k in loaded if k.startswith("model.0.")]
    assert encoder_keys  # the first encoder block is among them
    for k, v in head_before.items():
        assert torch.equal(after[k], v), k  # segmentation head: the fresh initialisation, not pre-trained
        if v.is_floating_point() and v.numel() > 1:
            assert not torch.equal(after[k], source[k])


def test_transfer_refuses_another_architecture() -> None:
    other = UNet(2, 1, 1, (8, 16, 64), (2, 2), num_res_units=1, norm="batch")
    with pytest.raises(ValueError, match="other shapes"):
        transfer_pretrained(_unet(0), other.state_dict())
    partial = {k: v for k, v in _unet(0).state_dict().items() if not k.startswith("model.0.")}
    with pytest.raises(KeyError, match="lack"):
        transfer_pretrained(_unet(1), partial)
