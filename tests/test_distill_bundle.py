"""The distillation bundle: two small real teachers trained here, selected, distilled; its error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from common.deploy.zoo import export_torchscript
from common.distill.selection import select_teachers
from common.utils.io import file_sha256
from tests.conftest import REPO, copy_bundle, read_json, run_bundle, run_torchrun, tiny_train_overrides

DISTILL = REPO / "bundles" / "distill"


def test_properties(tiny_siim: Path, tmp_path: Path) -> None:
    for config, kind, extra in (
        ("train.json", "train", {"dataset_dir": str(tiny_siim)}),
        ("inference.json", "infer", {"input_dir": str(tiny_siim)}),
    ):
        workflow = ConfigWorkflow(
            config_file=str(DISTILL / "configs" / config), workflow_type=kind, bundle_root=str(tmp_path), **extra
        )
        workflow.initialize()
        assert workflow.check_properties() == [], config


def test_labelled_share_reaches_the_students_sampler(tiny_siim: Path, tmp_path: Path) -> None:
    """``labelled_share`` sets the labelled images' share of the student's draws; ``natural`` keeps theirs."""
    shares = {}
    for share in ("natural", 0.5):
        workflow = ConfigWorkflow(
            config_file=str(DISTILL / "configs" / "train.json"),
            workflow_type="train",
            bundle_root=str(tmp_path / str(share)),
            dataset_dir=str(tiny_siim),
            labelled_fraction=0.25,
            labelled_share=share,
        )
        workflow.initialize()
        sampler = workflow.parser.get_parsed_content("train#sampler")
        flags = sampler.positive
        assert None in flags and True in flags  # unlabelled images take part, positives are known
        weights = list(sampler.weights)
        shares[share] = sum(w for w, p in zip(weights, flags, strict=True) if p is not None) / sum(weights)
        natural = sum(p is not None for p in flags) / len(flags)
    assert shares["natural"] == pytest.approx(natural) and natural < 0.4
    assert shares[0.5] == pytest.approx(0.5)


def test_teacher_top_k_keeps_the_best_teachers_of_the_selection(tiny_siim: Path, tmp_path: Path) -> None:
    """``teacher_top_k`` ensembles only the k teachers with the best validation score, ``teacher_combine`` sets
    how their probabilities combine; bad values stop the bundle."""

    def workflow(**overrides: object) -> ConfigWorkflow:
        flow = ConfigWorkflow(
            config_file=str(DISTILL / "configs" / "train.json"),
            workflow_type="train",
            bundle_root=str(tmp_path),
            dataset_dir=str(tiny_siim),
            **overrides,
        )
        flow.initialize()
        return flow

    network = workflow().parser.get_parsed_content("network_def")
    entries = []
    for task, score in (("rotation", 0.2), ("jigsaw", 0.4), ("genesis", 0.3)):
        checkpoint = tmp_path / f"{task}.pt"
        torch.save(network.state_dict(), checkpoint)
        entries.append({"task": task, "val": score, "checkpoint": checkpoint.name, "sha256": file_sha256(checkpoint)})
    selection = tmp_path / "teachers.json"
    selection.write_text(json.dumps({"teachers": entries}))
    for top_k, tasks in ((0, ["rotation", "jigsaw", "genesis"]), (2, ["jigsaw", "genesis"]), (1, ["jigsaw"])):
        ensemble = workflow(teachers_file=str(selection), teacher_top_k=top_k).parser.get_parsed_content("ensemble")
        assert ensemble.tasks == tasks
    for bad in (-1, "two", 1.5):
        with pytest.raises(SystemExit, match=f"--teacher_top_k {bad!r}: must be a whole number >= 0"):
            workflow(teacher_top_k=bad)
    for combine in ("mean", "max"):
        ensemble = workflow(teachers_file=str(selection), teacher_combine=combine).parser.get_parsed_content("ensemble")
        assert ensemble.combine == combine and ensemble.tasks == ["rotation", "jigsaw", "genesis"]
    with pytest.raises(SystemExit, match="--teacher_combine 'vote': "):
        workflow(teacher_combine="vote")


def _overrides(tiny_siim: Path, bundle: Path) -> list[str]:
    return [o for o in tiny_train_overrides(tiny_siim, bundle) if o not in ("--bundle_root", str(bundle))]


@pytest.fixture(scope="module")
def distill_setup(tmp_path_factory: pytest.TempPathFactory, tiny_siim: Path) -> Path:
    """Two teachers (baseline recipe, different seeds, one epoch) selected into a copy of the distill bundle."""
    root = tmp_path_factory.mktemp("pipeline")
    for task, seed in (("rotation", 1), ("genesis", 2)):
        bundle = copy_bundle("baseline", root / f"{task}_joint")
        run_bundle(
            [bundle / "configs" / "train.json"],
            *_overrides(tiny_siim, bundle),
            "--labelled_fraction",
            "0.5",
            "--seed",
            str(seed),
            cwd=root,
        )
    distill = copy_bundle("distill", root / "distill")
    assert select_teachers(root, ["rotation", "genesis"], allow_missing=True) == 0
    assert len(read_json(distill / "models" / "teachers.json")["teachers"]) == 2
    return distill


@pytest.mark.slow
def test_distill_trains_the_student_and_evaluates_the_ensemble(distill_setup: Path, tiny_siim: Path) -> None:
    bundle = distill_setup
    overrides = [*_overrides(tiny_siim, bundle), "--labelled_fraction", "0.5"]
    run_bundle([bundle / "configs" / "train.json"], *overrides, cwd=bundle.parent)
    metrics = read_json(bundle / "models" / "metrics.json")
    assert metrics["training"]["status"] == "complete"
    assert metrics["distillation"]["teachers"] == ["rotation", "genesis"]
    counts = metrics["training"]["counts"]
    assert counts["training_unlabelled"] > 0  # the unlabelled images were there to distil from
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(k.startswith("model.") for k in state)  # the plain student U-Net
    n_train = counts["training_labelled"] + counts["training_unlabelled"]
    assert len(list((bundle / "cache" / "soft_targets").glob("*/*.npy"))) == n_train
    ts = export_torchscript(bundle, read_json(bundle / "configs" / "metadata.json"))  # as every exported bundle
    assert torch.jit.load(str(ts))(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    configs = [bundle / "configs" / c for c in ("train.json", "evaluate.json", "evaluate_ensemble.json")]
    run_bundle(configs, *overrides, cwd=bundle.parent)
    metrics = read_json(bundle / "models" / "metrics.json")
    assert set(metrics["ensemble_test"]) >= {"dice", "dice_positive", "iou"}
    assert metrics["ensemble_test"]["checkpoint"].endswith("teachers.json")


def _run_fails(bundle: Path, tiny_siim: Path) -> str:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.json")]
    proc = subprocess.run(cmd + _overrides(tiny_siim, bundle), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    return proc.stderr


@pytest.mark.slow
def test_missing_selection_teacher_or_changed_checkpoint_stop_with_their_message(
    distill_setup: Path, tiny_siim: Path, tmp_path: Path
) -> None:
    bare = copy_bundle("distill", tmp_path / "distill")
    err = _run_fails(bare, tiny_siim)
    assert "error: no teacher selection" in err and "select_teachers.py" in err and "Traceback" not in err
    teacher = distill_setup.parent / "genesis_joint" / "models" / "model.pt"
    original = teacher.read_bytes()
    try:
        teacher.write_bytes(original + b"x")
        err = _run_fails(distill_setup, tiny_siim)
        assert "teacher genesis" in err and "sha256" in err and "re-run `python scripts/select_teachers.py`" in err
        teacher.unlink()
        err = _run_fails(distill_setup, tiny_siim)
        assert f"checkpoint {teacher} does not exist" in err
    finally:
        teacher.write_bytes(original)


@pytest.mark.slow
def test_online_mode_and_two_process_gloo(distill_setup: Path, tiny_siim: Path, tmp_path: Path) -> None:
    bundle = copy_bundle("distill", tmp_path / "distill")
    (bundle / "models" / "teachers.json").write_text((distill_setup / "models" / "teachers.json").read_text())
    configs = [bundle / "configs" / "train.json", bundle / "configs" / "multi_gpu_train.json"]
    run_torchrun(configs, *_overrides(tiny_siim, bundle), "--labelled_fraction", "0.5", cwd=tmp_path)
    assert read_json(bundle / "models" / "metrics.json")["training"]["status"] == "complete"
    online = [*_overrides(tiny_siim, bundle), "--soft_targets", "online", "--ckpt_dir", str(tmp_path / "online")]
    run_bundle(
        [bundle / "configs" / "train.json"],
        *online,
        "--teachers_file",
        str(bundle / "models" / "teachers.json"),
        cwd=tmp_path,
    )
    metrics = read_json(tmp_path / "online" / "metrics.json")
    assert metrics["training"]["status"] == "complete"
    assert metrics["distillation"]["soft_targets"] == "online"
