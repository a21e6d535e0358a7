"""The mean_teacher bundle (Mean Teacher, Tarvainen & Valpola 2017): the ramp-up, the EMA teacher and its
decay, the consistency term, the bundle's properties, a short CLI run with evaluation, and a bad setting."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from ignite.handlers import EMAHandler
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import DataLoader, Dataset
from monai.losses import DiceFocalLoss
from monai.networks.nets import UNet

from common.training.mean_teacher import ConsistencyObjective, MeanTeacherTrainer, ema_momentum, sigmoid_rampup
from pipeline.generate.mean_teacher import SETTINGS
from tests.conftest import REPO, copy_bundle, read_json, run_bundle, run_torchrun, tiny_train_overrides, try_bundle

BUNDLE = REPO / "bundles" / "mean_teacher"
RECORDED = ("loss", "seg_loss", "consistency", "consistency_weight", "ema_momentum")


def _data(n: int, labelled: bool, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        image = torch.rand(1, 32, 32, generator=g)
        items.append({"image": image, "label": (image > 0.7).float()} if labelled else {"image": image})
    return items


def _trainer(
    ema_decay: float = 0.99,
    ema_warmup: bool = True,
    noise_std: float = 0.05,
    rampup_epochs: float = 1.0,
    epochs: int = 1,
) -> tuple[MeanTeacherTrainer, list[dict[str, float]]]:
    """A Mean Teacher trainer on a small U-Net (2 labelled batches an epoch) and the outputs it records."""
    torch.manual_seed(0)
    student = UNet(2, 1, 1, (8, 16, 32), (2, 2), num_res_units=1, norm="batch")
    trainer = MeanTeacherTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=DataLoader(Dataset(_data(4, True, 0)), batch_size=2),
        aux_data_loader=DataLoader(Dataset(_data(6, False, 1)), batch_size=3, shuffle=True),
        network=student,
        optimizer=torch.optim.Adam(student.parameters(), lr=1e-2),
        loss_function=DiceFocalLoss(sigmoid=True),
        ema_handler=EMAHandler(student, momentum=1.0 - ema_decay, handle_buffers="ema_train"),
        consistency_weight=2.0,
        rampup_epochs=rampup_epochs,
        ema_warmup=ema_warmup,
        noise_std=noise_std,
        decollate=False,
    )
    outputs: list[dict[str, float]] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: outputs.append({k: float(e.state.output[k].detach()) for k in RECORDED})
    )
    return trainer, outputs


def _parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_sigmoid_rampup_rises_monotonically_from_exp_minus_5_to_the_full_weight() -> None:
    values = [sigmoid_rampup(t, 10.0) for t in np.linspace(0.0, 12.0, 49)]  # every quarter epoch; T at [40]
    assert values[0] == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(5.0, 10.0) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(10.0, 10.0) == 1.0 and values[-1] == 1.0
    assert all(b > a for a, b in itertools.pairwise(values[:41])) and set(values[40:]) == {1.0}
    assert sigmoid_rampup(0.0, 0.0) == 1.0  # no ramp-up: the full weight from the start


def test_the_weight_ramps_up_by_iteration_within_epochs() -> None:
    trainer, outputs = _trainer(rampup_epochs=1.0, epochs=2)
    trainer.run()
    # t = (iteration - 1) / epoch_length: 0, 0.5, then past the ramp-up; the weight is 2
    expected = [2 * math.exp(-5.0), 2 * math.exp(-1.25), 2.0, 2.0]
    assert [o["consistency_weight"] for o in outputs] == pytest.approx(expected)


@pytest.mark.parametrize("warmup", [False, True])
def test_the_teacher_follows_the_decay(warmup: bool) -> None:
    """After every optimiser step, teacher = decay * old teacher + (1 - decay) * student (the warm-up: decay
    ``1 - 1/(t+1)`` while it is smaller)."""
    trainer, outputs = _trainer(ema_decay=0.99, ema_warmup=warmup, epochs=2)
    student, teacher = trainer.network, trainer.teacher
    # the teacher starts as the initial network
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters(), strict=True))
    before: list[torch.Tensor] = []
    checked: list[float] = []

    def keep(engine: MeanTeacherTrainer) -> None:
        before[:] = _parameters(teacher)

    def check(engine: MeanTeacherTrainer) -> None:  # after the EMA handler (attached when the trainer was built)
        decay = 1.0 - ema_momentum(engine.state.iteration, 0.01, warmup)
        assert engine.state.ema_momentum == pytest.approx(1.0 - decay)
        for old, new, online in zip(before, teacher.parameters(), student.parameters(), strict=True):
            torch.testing.assert_close(new, decay * old + (1.0 - decay) * online, rtol=1e-5, atol=1e-7)
        checked.append(decay)

    trainer.add_event_handler(Events.ITERATION_STARTED, keep)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, check)
    trainer.run()
    assert checked == pytest.approx([0.99] * 4 if not warmup else [1 / 2, 2 / 3, 3 / 4, 4 / 5])
    assert [o["ema_momentum"] for o in outputs] == pytest.approx([1 - d for d in checked])
    # trained: the teacher lags the student, and its batch-norm statistics are its own (ignite's ema_train)
    assert any(not torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters(), strict=True))
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(student.buffers(), teacher.buffers(), strict=True))
    norms = [(m, t) for m, t in zip(student.modules(), teacher.modules(), strict=True) if hasattr(m, "running_mean")]
    assert norms and any(not torch.equal(m.running_mean, t.running_mean) for m, t in norms)


def test_consistency_is_zero_for_identical_networks_on_unperturbed_inputs() -> None:
    trainer, outputs = _trainer(noise_std=0.0)
    trainer.run()
    assert outputs[0]["consistency"] == 0.0  # the first step: the teacher is still the student
    noisy, noisy_outputs = _trainer(noise_std=0.05)
    noisy.run()
    assert noisy_outputs[0]["consistency"] > 0.0  # two differently perturbed views
    objective = ConsistencyObjective(0.0)
    images = torch.rand(2, 1, 8, 8)
    assert objective(images, images).item() == 0.0 and objective.views(images) == (images, images)


def test_views_have_their_own_seeded_noise() -> None:
    images = torch.rand(4, 1, 16, 16)
    student, teacher = ConsistencyObjective(0.05, seed=7).views(images)
    again, _ = ConsistencyObjective(0.05, seed=7).views(images)
    assert torch.equal(student, again) and not torch.equal(student, teacher)
    assert (student - images).std().item() == pytest.approx(0.05, rel=0.2)
    assert (teacher - images).std().item() == pytest.approx(0.05, rel=0.2)


def test_the_loss_is_finite_and_adds_the_weighted_consistency() -> None:
    trainer, outputs = _trainer(epochs=2)
    trainer.run()
    for o in outputs:
        assert math.isfinite(o["loss"]) and o["consistency"] > 0.0
        assert o["loss"] == pytest.approx(o["seg_loss"] + o["consistency_weight"] * o["consistency"], rel=1e-5)


def test_a_warmup_the_trainer_cannot_resume_is_refused() -> None:
    student = UNet(2, 1, 1, (8, 16), (2,), num_res_units=0)
    handler = EMAHandler(student, momentum=0.01, momentum_warmup=0.5, warmup_iters=10)
    with pytest.raises(ValueError, match="momentum_warmup"):
        MeanTeacherTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=[],
            aux_data_loader=[],
            network=student,
            optimizer=torch.optim.Adam(student.parameters()),
            loss_function=DiceFocalLoss(sigmoid=True),
            ema_handler=handler,
        )


def test_bundle_properties_and_which_network_is_validated(tiny_siim: Path, tmp_path: Path) -> None:
    configs = BUNDLE / "configs"
    for config, kind, extra in (
        ("train.json", "train", {"dataset_dir": str(tiny_siim)}),
        ("inference.json", "infer", {"input_dir": str(tiny_siim)}),
    ):
        workflow = ConfigWorkflow(
            config_file=str(configs / config), workflow_type=kind, bundle_root=str(tmp_path), **extra
        )
        workflow.initialize()
        assert workflow.check_properties() == [], config
    train = json.loads((configs / "train.json").read_text())
    keys = list(train)
    assert [k for k in keys if k in SETTINGS] == list(SETTINGS)  # the settings, together, before the data
    assert all(keys.index(k) < keys.index("datalist") for k in SETTINGS)
    for evaluate_ema in (True, False):
        parser = ConfigParser()
        parser.read_config(str(configs / "train.json"))
        parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(tiny_siim), "evaluate_ema": evaluate_ema})
        parser.parse()
        evaluated = parser.get_parsed_content("validate#evaluator").network
        expected = parser.get_parsed_content("teacher" if evaluate_ema else "network")
        assert evaluated is expected
        assert parser.get_parsed_content("train#trainer").teacher is parser.get_parsed_content("teacher")
        best_saver = parser.get_parsed_content("validate#handlers")[2]
        assert best_saver.save_dict["model"] is expected  # the key-metric saver: model.pt


@pytest.mark.slow
def test_cli_trains_and_saves_the_teacher_as_a_plain_unet(tiny_siim: Path, tmp_path: Path) -> None:
    bundle = copy_bundle("mean_teacher", tmp_path / "mean_teacher")
    train, evaluate = bundle / "configs" / "train.json", bundle / "configs" / "evaluate.json"
    common = ["--labelled_fraction", "0.5"]
    # validated at epoch 2 only: model.pt is then the teacher of the last epoch
    overrides = [*tiny_train_overrides(tiny_siim, bundle, epochs=2), *common, "--val_interval", "2"]
    run_bundle([train], *overrides, cwd=tmp_path)
    models = bundle / "models"
    metrics = read_json(models / "metrics.json")
    assert metrics["training"]["status"] == "complete" and metrics["validation"]["best_epoch"] == 2
    counts = metrics["training"]["counts"]
    assert metrics["training"]["unlabelled_stream_images"] > counts["training_labelled"] > 0
    (point,) = metrics["history"]
    assert {"train_seg_loss", "train_consistency", "train_consistency_weight", "dice_hmean"} <= set(point)
    assert point["train_consistency"] > 0 and point["train_consistency_weight"] == 1.0  # ramp-up: half an epoch
    assert metrics["config"]["ema_decay"] == 0.99 and metrics["model"]["image_size"] == 64

    model = torch.load(models / "model.pt", weights_only=True)
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "baseline" / "configs" / "inference.json"))
    parser.get_parsed_content("network_def").load_state_dict(model)  # the baseline's U-Net, strict
    last = torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)
    assert set(last) >= {"model", "teacher", "optimizer", "trainer", "random_state"}
    assert all(torch.equal(v, last["teacher"][k]) for k, v in model.items())
    assert any(not torch.equal(v, last["model"][k]) for k, v in model.items())  # not the student

    run_bundle([train, evaluate], "--bundle_root", str(bundle), "--dataset_dir", str(tiny_siim), *common, cwd=tmp_path)
    test = read_json(models / "metrics.json")["test"]
    assert test["checkpoint"] == str(models / "model.pt") and test["n_images"] > 0
    assert {"dice", "dice_positive", "iou", "dice_hmean"} <= set(test)


@pytest.mark.slow
def test_multi_gpu_mixin_trains_with_gloo_on_two_processes(tiny_siim: Path, tmp_path: Path) -> None:
    bundle = copy_bundle("mean_teacher", tmp_path / "mean_teacher")
    configs = [bundle / "configs" / "train.json", bundle / "configs" / "multi_gpu_train.json"]
    overrides = [o for o in tiny_train_overrides(tiny_siim, bundle) if o not in ("--bundle_root", str(bundle))]
    run_torchrun(configs, *overrides, "--labelled_fraction", "0.5", cwd=tmp_path)
    metrics = read_json(bundle / "models" / "metrics.json")
    assert metrics["training"]["status"] == "complete" and metrics["history"][-1]["train_consistency"] > 0
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(k.startswith("model.") for k in state)  # the plain U-Net, no DDP prefix


def test_a_bad_setting_stops_with_one_line_naming_it(tiny_siim: Path, tmp_path: Path) -> None:
    bundle = copy_bundle("mean_teacher", tmp_path / "mean_teacher")
    configs = [bundle / "configs" / "train.json"]
    proc = try_bundle(configs, *tiny_train_overrides(tiny_siim, bundle), "--ema_decay", "1.5", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "error: --ema_decay 1.5: must be a number in (0, 1)"
    assert not (bundle / "models" / "metrics.json").exists()
