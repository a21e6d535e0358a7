"""``aux_balancing``: what each mode promises (``common.training.balancing``), in the joint trainer and the bundles."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceFocalLoss
from monai.networks.nets import UNet

from common.ssl import create_task
from common.training.balancing import (
    SEG,
    FixedBalancing,
    GradNormBalancing,
    UncertaintyBalancing,
    create_balancer,
    param_groups,
    shared_parameters,
)
from common.training.engines import AuxiliaryObjective, MultiTaskTrainer
from common.training.networks import MultiTaskUNet, seg_head_prefix
from common.utils.settings import check_settings
from tests.conftest import copy_bundle, read_json, run_bundle
from tests.test_resume_exact import _assert_same_run, _killed_after, _resume

TASKS = ("rotation", "genesis")  # a bottleneck task (encoder only) and a decoder task


def _model() -> MultiTaskUNet:
    torch.manual_seed(0)
    unet = UNet(2, 1, 1, (8, 16, 32), (2, 2), num_res_units=1, norm="batch")
    return MultiTaskUNet(unet, {t: create_task(t) for t in TASKS})


def _losses(model: MultiTaskUNet) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A segmentation loss and each task's loss, on random images, with their graphs."""
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 1, 32, 32, generator=g)
    seg = DiceFocalLoss(sigmoid=True)(model(images), (images > 0.7).float())
    losses, _ = AuxiliaryObjective(model, dict.fromkeys(TASKS, 1.0)).losses(
        model, torch.rand(4, 1, 32, 32, generator=g)
    )
    return seg, losses


def _reached(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The parameters ``loss`` has a gradient for."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]


def _grad_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads if g is not None]))


def _trainer(model: MultiTaskUNet, optimizer: torch.optim.Optimizer, weights: dict, **kwargs) -> MultiTaskTrainer:
    """A one-epoch MultiTaskTrainer over four random 32 px images (labelled and auxiliary loaders alike)."""
    data = [{"image": torch.rand(1, 32, 32), "label": torch.zeros(1, 32, 32)} for _ in range(4)]
    return MultiTaskTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(Dataset(data), batch_size=2),
        aux_data_loader=DataLoader(Dataset(data), batch_size=2),
        network=model,
        optimizer=optimizer,
        loss_function=DiceFocalLoss(sigmoid=True),
        task_weights=weights,
        **kwargs,
    )


# fixed


def test_fixed_is_seg_weight_times_seg_plus_lambda_weighted_tasks() -> None:
    seg, losses = torch.tensor(0.7), {"rotation": torch.tensor(1.3), "genesis": torch.tensor(0.2)}
    joint = FixedBalancing({"rotation": 0.5, "genesis": 0.0}, seg_weight=2.0)(seg, losses)
    assert torch.equal(joint.total, 2.0 * seg + (0.5 * losses["rotation"] + 0.0 * losses["genesis"]))
    assert float(joint.aux) == pytest.approx(0.65)
    assert {k: float(v) for k, v in joint.weights.items()} == {SEG: 2.0, "rotation": 0.5, "genesis": 0.0}


def test_fixed_with_lambda_zero_leaves_the_segmentation_gradient_bit_identical() -> None:
    model = _model()
    seg, losses = _losses(model)
    alone = torch.autograd.grad(seg, list(model.seg_net.parameters()), retain_graph=True)
    joint = FixedBalancing(dict.fromkeys(TASKS, 0.0))(seg, losses)
    together = torch.autograd.grad(joint.total, list(model.seg_net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))


def test_the_trainer_weighs_fixed_by_default_and_records_the_weights() -> None:
    model = _model()
    trainer = _trainer(model, torch.optim.Adam(model.parameters()), {"rotation": 0.3, "genesis": 0.0})
    assert isinstance(trainer.balancer, FixedBalancing)
    trainer.run()
    out = trainer.state.output[0]
    assert out["seg_weight"] == 1.0 and out["aux_weight/rotation"] == pytest.approx(0.3)
    assert out["aux_weight/genesis"] == 0.0 and out["aux_loss/genesis"] > 0  # off, yet computed
    with pytest.raises(ValueError, match="the balancer weighs"):
        optimizer = torch.optim.Adam(model.parameters())
        _trainer(model, optimizer, {"rotation": 0.3, "genesis": 0.0}, balancer=FixedBalancing({"rotation": 0.3}))


# uncertainty


def test_uncertainty_starts_at_the_fixed_weights_and_has_kendalls_form() -> None:
    balancer = UncertaintyBalancing({"rotation": 0.01, "genesis": 0.0}, seg_weight=1.0)
    assert set(balancer.log_vars) == {SEG, "rotation"}  # genesis is off: nothing to learn
    seg, losses = torch.tensor(0.8), {"rotation": torch.tensor(1.4), "genesis": torch.tensor(0.3)}
    joint = balancer(seg, losses)
    assert {k: float(v) for k, v in joint.weights.items()} == pytest.approx({SEG: 1.0, "rotation": 0.01, "genesis": 0})
    s = {k: float(v.detach()) for k, v in balancer.log_vars.items()}
    expected = math.exp(-s[SEG]) * 0.8 + s[SEG] + math.exp(-s["rotation"]) * 1.4 + s["rotation"]
    assert float(joint.total.detach()) == pytest.approx(expected, rel=1e-6)
    assert float(joint.aux) == pytest.approx(0.01 * 1.4, rel=1e-5)


def test_uncertainty_gradients_reach_the_log_variances_and_the_weights_are_learnt() -> None:
    balancer = UncertaintyBalancing({"rotation": 1.0})
    seg, rotation = torch.tensor(0.5), torch.tensor(4.0)
    balancer(seg, {"rotation": rotation}).total.backward()
    for name, loss in ((SEG, seg), ("rotation", rotation)):  # d/ds (exp(-s) L + s) = 1 - exp(-s) L
        s = balancer.log_vars[name]
        assert float(s.grad) == pytest.approx(1 - math.exp(-float(s.detach())) * float(loss), rel=1e-6)
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.02)
    for _ in range(1000):
        optimizer.zero_grad()
        balancer(seg, {"rotation": rotation}).total.backward()
        optimizer.step()
    weights = balancer(seg, {"rotation": rotation}).weights  # at the optimum exp(-s) = 1 / L
    assert float(weights[SEG]) == pytest.approx(1 / 0.5, rel=0.05)
    assert float(weights["rotation"]) == pytest.approx(1 / 4.0, rel=0.05)


def test_uncertainty_parameters_are_optimised_without_weight_decay() -> None:
    model, balancer = _model(), create_balancer("uncertainty", {"rotation": 0.1, "genesis": 0.1})
    groups = param_groups(model, balancer)
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["params"] == list(balancer.parameters())
    assert param_groups(model, create_balancer("fixed", {"rotation": 0.1})) == list(model.parameters())
    before = {k: v.detach().clone() for k, v in balancer.log_vars.items()}
    optimizer = torch.optim.AdamW(groups, lr=1e-2, weight_decay=1e-4)
    trainer = _trainer(model, optimizer, {"rotation": 0.1, "genesis": 0.1}, balancer=balancer)
    trainer.run()
    assert all(not torch.equal(before[k], v) for k, v in balancer.log_vars.items())
    assert set(balancer.state_dict()) == {f"log_vars.{k}" for k in (SEG, *TASKS)}  # what a checkpoint carries


# gradnorm


def test_gradnorm_makes_each_task_gradient_ratio_times_the_segmentation_gradient() -> None:
    model = _model()
    seg, losses = _losses(model)
    shared = shared_parameters(model)
    head = seg_head_prefix(model.seg_net)
    assert len(shared) == sum(1 for n, _ in model.seg_net.named_parameters() if not n.startswith(head))
    joint = GradNormBalancing(dict.fromkeys(TASKS, 1.0), seg_weight=2.0, ratio=0.25)(seg, losses, shared)
    for task, loss in losses.items():
        weight = joint.weights[task]
        assert not weight.requires_grad and float(weight) > 0
        # the weights the task's loss reaches (rotation: the encoder only), compared on those
        reached = _reached(loss, shared)
        assert 0 < len(reached) <= len(shared)
        scaled, reference = _grad_norm(weight * loss, reached), _grad_norm(2.0 * seg, reached)
        assert float(scaled) == pytest.approx(0.25 * float(reference), rel=1e-4), task
    assert len(_reached(losses["rotation"], shared)) < len(shared)  # the bottleneck task does not reach the decoder
    expected = 2.0 * seg + sum(joint.weights[t] * losses[t] for t in TASKS)
    assert float(joint.total.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    joint.total.backward()  # the graph survives the norm computations


def test_gradnorm_keeps_a_task_with_lambda_zero_off() -> None:
    model = _model()
    seg, losses = _losses(model)
    joint = GradNormBalancing({"rotation": 0.0, "genesis": 1.0})(seg, losses, shared_parameters(model))
    assert float(joint.weights["rotation"]) == 0.0 and float(joint.weights["genesis"]) > 0


def test_bad_balancing_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="aux_balancing must be one of"):
        create_balancer("kendall", {"rotation": 1.0})
    with pytest.raises(ValueError, match="finite and >= 0"):
        create_balancer("fixed", {"rotation": -1.0})
    with pytest.raises(ValueError, match="gradnorm_ratio"):
        create_balancer("gradnorm", {"rotation": 1.0}, gradnorm_ratio=0)
    assert check_settings(aux_balancing="gradnorm", gradnorm_ratio=0.5)
    with pytest.raises(SystemExit, match="--aux_balancing 'kendall': must be one of fixed, uncertainty, gradnorm"):
        check_settings(aux_balancing="kendall")
    with pytest.raises(SystemExit, match="--gradnorm_ratio 0"):
        check_settings(gradnorm_ratio=0)


# the bundles


def _overrides(tiny_siim: Path, bundle: Path, epochs: int, *extra: str) -> list[str]:
    return [
        "--bundle_root", str(bundle), "--dataset_dir", str(tiny_siim), "--image_size", "32", "--batch_size", "4",
        "--num_workers", "0", "--epochs", str(epochs), "--labelled_fraction", "0.5", *extra,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fixed", "uncertainty", "gradnorm"])
def test_cli_short_run_per_mode_records_finite_losses_and_weights(mode: str, tiny_siim: Path, tmp_path: Path) -> None:
    bundle = copy_bundle("rotation_joint", tmp_path / "rotation_joint")
    run_bundle(
        [bundle / "configs" / "train.json"], *_overrides(tiny_siim, bundle, 1, "--aux_balancing", mode), cwd=tmp_path
    )
    metrics = read_json(bundle / "models" / "metrics.json")
    assert metrics["training"]["status"] == "complete" and metrics["config"]["aux_balancing"] == mode
    (point,) = metrics["history"]
    keys = ["train_loss", "train_seg_loss", "train_aux_loss", "train_aux_loss_rotation", "train_aux_weight_rotation"]
    assert all(math.isfinite(point[k]) for k in [*keys, "train_seg_weight"]), point
    assert point["train_aux_weight_rotation"] > 0
    if mode == "fixed":  # the generated lambda, unchanged
        assert (
            point["train_aux_weight_rotation"]
            == read_json(bundle / "configs" / "train.json")["aux_weights"]["rotation"]
        )
    checkpoint = torch.load(bundle / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert set(checkpoint["balancer"]) == ({"log_vars.seg", "log_vars.rotation"} if mode == "uncertainty" else set())


@pytest.mark.slow
def test_uncertainty_resume_is_exact(tiny_siim: Path, tmp_path: Path) -> None:
    """The checkpoint carries the log-variances and their optimiser state: killed and resumed, the run ends
    where the uninterrupted one did, bit for bit."""
    reference, resumed = (copy_bundle("rotation_joint", tmp_path / name) for name in ("reference", "resumed"))
    extra = ("--aux_balancing", "uncertainty")
    run_bundle([reference / "configs" / "train.json"], *_overrides(tiny_siim, reference, 3, *extra), cwd=tmp_path)
    overrides = _overrides(tiny_siim, resumed, 3, *extra)
    _killed_after(resumed, overrides, "train", 1)
    _resume(resumed, overrides, "checkpoint_epoch=1.pt")
    _assert_same_run(reference, resumed, ["checkpoint_epoch=3.pt", "model.pt"])
    weights = [h["train_aux_weight_rotation"] for h in read_json(resumed / "models" / "metrics.json")["history"]]
    assert len(set(weights)) == 3  # learnt: it moved every epoch
