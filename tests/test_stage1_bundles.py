"""The generated stage-1 bundles: up to date, MONAI properties, a short CLI run each, the hand-off."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from common.data.datalist import build_datalist, scan_dataset
from common.ssl import list_tasks
from common.training.networks import seg_head_prefix
from pipeline.generate import variants
from scripts.generate_bundles import main as generate
from tests.conftest import REPO, copy_bundle, read_json, run_bundle, run_torchrun, tiny_train_overrides, try_bundle

NAMES = [v.name for v in variants()]


def hssl_extra(name: str, multidomain: Path) -> dict[str, str]:
    """HSSL bundles read the multi-domain datalist (the tiny synthetic one here)."""
    return {"multidomain_datalist": str(multidomain)} if name.startswith("hssl") else {}


def as_cli(extra: dict[str, str]) -> list[str]:
    return [a for k, v in extra.items() for a in (f"--{k}", v)]


def test_generated_bundles_are_up_to_date() -> None:
    assert generate(["--check"]) == 0, "run python scripts/generate_bundles.py and commit the result"
    n_tasks = len(list_tasks())  # a joint and a pre-training bundle per registered task, and multitask_joint
    assert len(NAMES) == 2 * n_tasks + 1 and sum(n.endswith("_pretrain") for n in NAMES) == n_tasks


@pytest.mark.parametrize("name", NAMES)
def test_properties(name: str, tiny_siim: Path, tiny_multidomain: Path, tmp_path: Path) -> None:
    configs = REPO / "bundles" / name / "configs"
    for config, kind, extra in (
        ("train.json", "train", {"dataset_dir": str(tiny_siim), **hssl_extra(name, tiny_multidomain)}),
        ("inference.json", "infer", {"input_dir": str(tiny_siim)}),
    ):
        workflow = ConfigWorkflow(
            config_file=str(configs / config), workflow_type=kind, bundle_root=str(tmp_path), **extra
        )
        workflow.initialize()
        assert workflow.check_properties() == [], (name, config)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_cli_short_run_writes_model_and_metrics(
    name: str, tiny_siim: Path, tiny_multidomain: Path, tmp_path: Path
) -> None:
    bundle = copy_bundle(name, tmp_path / name)
    overrides = [o for o in tiny_train_overrides(tiny_siim, bundle) if o not in ("--bundle_root", str(bundle))]
    extra = ["--pretrain_epochs", "1"] if name.endswith("_pretrain") else []
    extra += as_cli(hssl_extra(name, tiny_multidomain))
    run_bundle([bundle / "configs" / "train.json"], *overrides, "--labelled_fraction", "0.5", *extra, cwd=tmp_path)
    metrics = read_json(bundle / "models" / "metrics.json")
    assert metrics["training"]["status"] == "complete"
    assert set(metrics["validation"]) >= {"dice", "dice_positive", "iou"}
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(k.startswith("model.") for k in state)  # the plain U-Net, no heads, no wrapper prefix
    if name.endswith("_pretrain"):
        assert (bundle / "models" / "pretrained.pt").is_file()
        assert metrics["pretraining"]["epochs"] == 1 and "aux_loss" in metrics["pretraining"]["metrics"]
    if name.startswith("hssl"):  # what the task learned from: the demo domains plus the target's training images
        counts = metrics["training"]["aggregate_counts"]
        split = build_datalist(scan_dataset(tiny_siim), 0.5, 0)  # the bundle's own split (seed 0)
        assert counts["domain"]["target"] == len(split["training_labelled"]) + len(split["training_unlabelled"])
        assert len(counts["domain"]) == 6
        assert sum(counts["group"].values()) == sum(counts["domain"].values())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inpainting_pretrain", "hssl_pretrain"])
def test_pretrain_then_train_hands_the_weights_over(
    name: str, tiny_siim: Path, tiny_multidomain: Path, tmp_path: Path
) -> None:
    bundle = copy_bundle(name, tmp_path / "b")
    overrides = [*tiny_train_overrides(tiny_siim, bundle), *as_cli(hssl_extra(name, tiny_multidomain))]
    run_bundle([bundle / "configs" / "pretrain.json"], *overrides, "--pretrain_epochs", "1", cwd=tmp_path)
    assert not (bundle / "models" / "model.pt").exists()  # the pre-training phase alone
    pretrained = torch.load(bundle / "models" / "pretrained.pt", weights_only=True)
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"),
        workflow_type="train",
        bundle_root=str(bundle),
        dataset_dir=str(tiny_siim),
        image_size=64,
        **hssl_extra(name, tiny_multidomain),
    )
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    before = {k: v.clone() for k, v in network.state_dict().items()}
    hand_off = [
        i for i, step in enumerate(workflow.parser["run"]) if "common.training.networks.with_pretrained" in step
    ]
    assert len(hand_off) == 1
    workflow.parser.get_parsed_content(f"run#{hand_off[0]}")  # the bundle's own hand-off (pre-training skipped)
    prefix = seg_head_prefix(network)
    after = network.state_dict()
    for key, value in after.items():
        if key.startswith(prefix):
            assert torch.equal(value, before[key]), key  # segmentation head: fresh, as built
        else:
            assert torch.equal(value.cpu(), pretrained[key]), key  # everything else: the pre-trained tensors
    moved = [k for k in after if not k.startswith(prefix) and not torch.equal(after[k], before[k])]
    assert moved  # the transfer really changed the network


@pytest.mark.slow
def test_interrupted_pretraining_resumes_from_its_epoch_checkpoint(tiny_siim: Path, tmp_path: Path) -> None:
    bundle = copy_bundle("rotation_pretrain", tmp_path / "b")
    train = bundle / "configs" / "train.json"
    overrides = [*tiny_train_overrides(tiny_siim, bundle), "--pretrain_epochs", "3", "--labelled_fraction", "0.5"]
    # a hard crash (no clean-up, like a killed job) right after the first pre-training epoch is saved
    run_steps = read_json(train)["run"]
    crash = "$@pretrain#trainer.add_event_handler(ignite.engine.Events.EPOCH_COMPLETED(once=1), lambda e: os._exit(3))"
    saver = next(i for i, step in enumerate(run_steps) if "@pretrain#checkpoint_saver.attach" in step)
    crashing = [*run_steps[: saver + 1], crash, *run_steps[saver + 1 :]]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(train), *overrides]
    cmd += ["--run", repr(crashing)]
    assert subprocess.run(cmd, cwd=tmp_path, capture_output=True, timeout=600).returncode == 3
    models = bundle / "models"
    assert (models / "pretrain_checkpoint_epoch=1.pt").is_file()
    assert not (models / "pretrained.pt").exists() and not (models / "model.pt").exists()

    proc = run_bundle([train], *overrides, "--resume", "true", cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert "pretrain_checkpoint_epoch=1.pt" in log  # CheckpointLoader: "Restored all variables from ..."
    assert "Epoch[1] Metrics -- aux_loss" not in log and "Epoch[2] Metrics -- aux_loss" in log
    assert (models / "pretrain_checkpoint_epoch=3.pt").is_file()
    metrics = read_json(models / "metrics.json")
    assert metrics["pretraining"]["epochs"] == 3 and metrics["training"]["status"] == "complete"
    assert (models / "pretrained.pt").is_file() and (models / "checkpoint_epoch=1.pt").is_file()


def test_resume_without_any_checkpoint_is_a_clear_error(tiny_siim: Path, tmp_path: Path) -> None:
    bundle = copy_bundle("rotation_pretrain", tmp_path / "b")
    configs = [bundle / "configs" / "train.json"]
    proc = try_bundle(configs, *tiny_train_overrides(tiny_siim, bundle), "--resume", "true", cwd=tmp_path)
    assert proc.returncode != 0
    assert "has no checkpoint_epoch=*.pt or pretrain_checkpoint_epoch=*.pt" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rotation_joint", "genesis_pretrain", "hssl_joint"])
def test_multi_gpu_mixin_trains_with_gloo_on_two_processes(
    name: str, tiny_siim: Path, tiny_multidomain: Path, tmp_path: Path
) -> None:
    bundle = copy_bundle(name, tmp_path / name)
    configs = [bundle / "configs" / "train.json", bundle / "configs" / "multi_gpu_train.json"]
    overrides = [o for o in tiny_train_overrides(tiny_siim, bundle) if o not in ("--bundle_root", str(bundle))]
    overrides += as_cli(hssl_extra(name, tiny_multidomain))  # hssl: domain-balanced draws sharded over ranks
    run_torchrun(configs, *overrides, "--pretrain_epochs", "1", "--labelled_fraction", "0.5", cwd=tmp_path)
    metrics = read_json(bundle / "models" / "metrics.json")
    assert metrics["training"]["status"] == "complete"
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(k.startswith("model.") for k in state)
    if name.endswith("_pretrain"):  # both phases ran under torchrun
        assert (bundle / "models" / "pretrained.pt").is_file() and metrics["pretraining"]["epochs"] == 1
