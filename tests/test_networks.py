"""The pre-training hand-off (shared weights transferred exactly, segmentation head fresh) and the output prior."""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks.nets import UNet

from common.ssl import create_task
from common.training.networks import MultiTaskUNet, seg_head_prefix, transfer_pretrained, with_output_prior
from common.utils.settings import check_settings


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


@pytest.mark.parametrize("res_units", [0, 2])
def test_output_prior_starts_the_network_near_the_prior(res_units: int) -> None:
    torch.manual_seed(0)
    net = UNet(2, 1, 1, (8, 16, 32), (2, 2), num_res_units=res_units, norm="batch")
    x = torch.rand(4, 1, 32, 32)
    fresh = torch.sigmoid(net(x)).mean().item()
    assert with_output_prior(net, "off") is net and torch.sigmoid(net(x)).mean().item() == pytest.approx(fresh)
    with_output_prior(net, 0.01)
    for mode in (net.train, net.eval):
        mode()
        assert 0.002 < torch.sigmoid(net(x)).mean().item() < 0.05  # was about 0.5


def test_output_prior_survives_the_pretrained_transfer() -> None:
    net = with_output_prior(_unet(1), 0.01)
    transfer_pretrained(net, _unet(2).state_dict())
    assert torch.sigmoid(net(torch.rand(2, 1, 32, 32))).mean().item() < 0.05


@pytest.mark.parametrize("value", [0, 1, 1.5, "abc"])
def test_output_prior_setting_refuses_what_has_no_finite_logit(value: object) -> None:
    with pytest.raises(SystemExit, match=r"error: --output_prior .*: must be a number in \(0, 1\)"):
        check_settings(output_prior=value)


@pytest.mark.parametrize("bundle", ["baseline", "rotation_pretrain", "mean_teacher", "distill"])
def test_every_bundle_trains_from_the_prior_by_default(bundle: str) -> None:
    from monai.bundle import ConfigParser

    from common.training.networks import output_convolution
    from tests.conftest import REPO

    parser = ConfigParser()
    parser.read_config(REPO / "bundles" / bundle / "configs" / "train.json")
    assert parser["output_prior"] == 0.01
    gpu = ConfigParser.load_config_file(REPO / "bundles" / bundle / "configs" / "multi_gpu_train.json")
    assert "with_output_prior(@network_def, @output_prior)" in json.dumps(gpu) or "network" not in gpu
    parser["device"] = "$torch.device('cpu')"
    bias = output_convolution(parser.get_parsed_content("network")).bias
    assert torch.allclose(bias, torch.logit(torch.tensor(0.01)))
