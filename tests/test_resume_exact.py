"""A hard kill and ``--resume true`` reproduce the uninterrupted run: the same weights, bit for bit, on the CPU.

``RandomState`` alone first (fast), then the bundles (slow). Each bundle case trains once uninterrupted and
once killed (``os._exit`` right after an epoch's checkpoint is written: no clean-up, like ``kill -9``) and
resumed to the end, then compares every tensor of the last checkpoint (model, optimiser, schedule, random
state) and of ``model.pt``, and the validation metrics and learning curve.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.networks.nets import UNet
from monai.transforms import Compose, RandAffined, RandFlipd, RandGaussianNoised

from common.distill.selection import select_teachers
from common.ssl import create_task
from common.training.engines import AuxiliaryObjective
from common.training.networks import MultiTaskUNet
from common.training.rng import RandomState
from tests.conftest import copy_bundle, read_json, run_bundle, tiny_train_overrides

KILLED = 9


class _Engine:
    """What RandomState reads from a trainer: its loaders and its objective."""

    def __init__(self) -> None:
        augment = [RandFlipd("image", prob=0.5), RandAffined("image", prob=0.5, rotate_range=0.3)]
        g = torch.Generator().manual_seed(0)
        items = [{"image": torch.rand(1, 16, 16, generator=g)} for _ in range(6)]
        self.data_loader = DataLoader(Dataset(items, Compose(augment)), batch_size=2, shuffle=True)
        noisy = Dataset(items, RandGaussianNoised("image", prob=1.0))
        self.aux_data_loader = DataLoader(noisy, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(1))
        unet = UNet(2, 1, 1, (4, 8), (2,), num_res_units=0)
        self.objective = AuxiliaryObjective(
            MultiTaskUNet(unet, {"rotation": create_task("rotation")}), {"rotation": 1.0}
        )

    def draw(self) -> list[float]:
        """One epoch of both loaders, a pretext, and each process-wide generator."""
        out = [b["image"].sum().item() for loader in (self.data_loader, self.aux_data_loader) for b in loader]
        out.append(torch.rand(1, generator=self.objective.generator(torch.device("cpu"))).item())
        return [*out, random.random(), float(np.random.rand()), torch.rand(1).item()]


def test_random_state_round_trip_restores_every_stream() -> None:
    engine = _Engine()
    state = RandomState([engine])
    engine.draw()
    saved = io.BytesIO()
    torch.save(state.state_dict(), saved)
    expected = engine.draw()
    engine.draw()
    saved.seek(0)
    fresh = _Engine()  # a new process: nothing drawn yet, the pretext generator not even created
    RandomState([fresh]).load_state_dict(torch.load(saved, weights_only=True))  # as CheckpointLoader loads
    assert fresh.draw() == expected


def _overrides(tiny_siim: Path, bundle: Path, epochs: int, *extra: str) -> list[str]:
    return [*tiny_train_overrides(tiny_siim, bundle, epochs=epochs), "--labelled_fraction", "0.5", *extra]


def _killed_after(bundle: Path, overrides: list[str], phase: str, epoch: int) -> None:
    """Run ``train.json``, exiting hard right after the checkpoint of ``epoch`` of ``phase`` (train / pretrain)."""
    train = bundle / "configs" / "train.json"
    steps = read_json(train)["run"]
    saver = next(i for i, step in enumerate(steps) if f"@{phase}#checkpoint_saver.attach" in step)
    crash = (
        f"$@{phase}#trainer.add_event_handler(ignite.engine.Events.EPOCH_COMPLETED(once={epoch}), "
        f"lambda e: os._exit({KILLED}))"
    )
    crashing = [*steps[: saver + 1], crash, *steps[saver + 1 :]]
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(train),
        *overrides,
        "--run",
        repr(crashing),
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run(cmd, cwd=bundle.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == KILLED, proc.stderr[-4000:]
    prefix = "pretrain_" if phase == "pretrain" else ""
    assert (bundle / "models" / f"{prefix}checkpoint_epoch={epoch}.pt").is_file()


def _resume(bundle: Path, overrides: list[str], checkpoint: str) -> None:
    proc = run_bundle([bundle / "configs" / "train.json"], *overrides, "--resume", "true", cwd=bundle.parent)
    assert f"Restored all variables from {bundle / 'models' / checkpoint}" in proc.stdout + proc.stderr


def _assert_identical(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}/{i}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_files(reference: Path, resumed: Path, files: list[str]) -> None:
    for name in files:
        a, b = (
            torch.load(run / "models" / name, map_location="cpu", weights_only=True) for run in (reference, resumed)
        )
        _assert_identical(a, b, name)


def _assert_same_run(reference: Path, resumed: Path, files: list[str]) -> None:
    _assert_same_files(reference, resumed, files)
    ref, res = read_json(reference / "models" / "metrics.json"), read_json(resumed / "models" / "metrics.json")
    assert res["training"]["status"] == "complete"
    for section in ("validation", "history"):
        assert res[section] == ref[section], section
    if "pretraining" in ref:
        assert res["pretraining"]["metrics"] == ref["pretraining"]["metrics"]


def _train(bundle: Path, overrides: list[str]) -> None:
    run_bundle([bundle / "configs" / "train.json"], *overrides, cwd=bundle.parent)


def _killed_resumed_as(reference: Path, resumed: Path, tiny_siim: Path) -> None:
    """Train ``resumed`` 3 epochs, killed after the first and resumed, like ``reference`` (3 epochs in one go)."""
    overrides = _overrides(tiny_siim, resumed, 3)
    _killed_after(resumed, overrides, "train", 1)
    _resume(resumed, overrides, "checkpoint_epoch=1.pt")
    _assert_same_run(reference, resumed, ["checkpoint_epoch=3.pt", "model.pt"])


@pytest.fixture(scope="module")
def baseline_reference(tmp_path_factory: pytest.TempPathFactory, tiny_siim: Path) -> Path:
    """The baseline trained 3 epochs uninterrupted (laid out as a stage-1 teacher for the distill case)."""
    bundle = copy_bundle("baseline", tmp_path_factory.mktemp("stage1") / "rotation_joint")
    _train(bundle, _overrides(tiny_siim, bundle, 3))
    return bundle


@pytest.mark.slow
def test_baseline_resume_is_exact(baseline_reference: Path, tiny_siim: Path, tmp_path: Path) -> None:
    _killed_resumed_as(baseline_reference, copy_bundle("baseline", tmp_path / "baseline"), tiny_siim)


@pytest.mark.slow
def test_joint_resume_is_exact(tiny_siim: Path, tmp_path: Path) -> None:
    """The auxiliary loader is longer than the labelled one: its stream must not carry over epochs; the
    checkpoint must carry the task heads."""
    reference, resumed = (copy_bundle("rotation_joint", tmp_path / name) for name in ("reference", "resumed"))
    _train(reference, _overrides(tiny_siim, reference, 3))
    _killed_resumed_as(reference, resumed, tiny_siim)


@pytest.mark.slow
def test_mean_teacher_resume_is_exact(tiny_siim: Path, tmp_path: Path) -> None:
    """The checkpoint must carry the EMA teacher (weights and its own batch-norm statistics) and the noise
    generator; the EMA momentum and the ramp-up follow the restored iteration count."""
    reference, resumed = (copy_bundle("mean_teacher", tmp_path / name) for name in ("reference", "resumed"))
    _train(reference, _overrides(tiny_siim, reference, 3))
    _killed_resumed_as(reference, resumed, tiny_siim)


@pytest.mark.slow
def test_pretrain_resume_is_exact_in_either_phase(tiny_siim: Path, tmp_path: Path) -> None:
    """Killed in the pre-training phase, resumed and killed again in fine-tuning, resumed to the end."""
    reference, resumed = (copy_bundle("rotation_pretrain", tmp_path / name) for name in ("reference", "resumed"))
    extra = ("--pretrain_epochs", "2")
    _train(reference, _overrides(tiny_siim, reference, 2, *extra))
    overrides = _overrides(tiny_siim, resumed, 2, *extra)
    _killed_after(resumed, overrides, "pretrain", 1)
    _killed_after(resumed, [*overrides, "--resume", "true"], "train", 1)
    _assert_same_files(reference, resumed, ["pretrain_checkpoint_epoch=2.pt", "pretrained.pt"])
    _resume(resumed, overrides, "checkpoint_epoch=1.pt")
    _assert_same_run(reference, resumed, ["pretrain_checkpoint_epoch=2.pt", "checkpoint_epoch=2.pt", "model.pt"])


@pytest.mark.slow
def test_distill_resume_is_exact(baseline_reference: Path, tiny_siim: Path, tmp_path: Path) -> None:
    reference, resumed = (copy_bundle("distill", tmp_path / name) for name in ("reference", "resumed"))
    for bundle in (reference, resumed):  # one teacher: the baseline reference run
        out = bundle / "models" / "teachers.json"
        assert select_teachers(baseline_reference.parent, ["rotation"], out=out, allow_missing=True) == 0
    _train(reference, _overrides(tiny_siim, reference, 3))
    _killed_resumed_as(reference, resumed, tiny_siim)
