"""Faults around a finished pipeline run: nothing completed is lost, nothing corrupt is silently reused,
unknown ``--set`` keys stop the run, and a dry run writes nothing.

One tiny run (baseline, rotation_joint as the only teacher, the student) is trained once per module; each
test gets a fresh copy of it at the same path (the fingerprints record absolute paths).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from common.deploy.zoo import BundleZipError, load_weights
from common.distill.teachers import TeacherSelectionError, load_teacher
from common.training.networks import with_pretrained
from common.utils.checkpoints import CheckpointError, load_checkpoint, require_loadable
from common.utils.io import file_sha256
from common.utils.metrics import RunMetrics
from pipeline.runner import Runner, StepError
from pipeline.scales import check_overrides
from pipeline.setting import RunSetting
from pipeline.steps import CORRUPT, Step, evaluate_step, plan_training
from scripts.compare_pretraining import main as compare_pretraining
from scripts.run_pipeline import main as run_pipeline
from scripts.sweep_lambda import main as sweep_lambda
from tests.conftest import REPO


def pipeline_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--dataset-dir", str(dataset), "--out", str(out), "--scale", "demo", "--labelled-fraction", "0.5",
        "--tasks", "rotation", "--skip", "multitask_joint", "rotation_pretrain", "mean_teacher", "--jobs", "1",
        "--set", "epochs=1", "val_interval=1", "num_workers=0", "output_prior=off", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tiny_siim: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(where the run lives, a pristine copy of it): trained and evaluated once."""
    base = tmp_path_factory.mktemp("faults")
    assert run_pipeline(pipeline_args(tiny_siim, base / "run")) == 0
    shutil.copytree(base / "run", base / "pristine")
    return base / "run", base / "pristine"


@pytest.fixture
def run(finished: tuple[Path, Path]) -> Path:
    """The finished run, as it was after training (restored at the same path for every test)."""
    out, pristine = finished
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(pristine, out)
    return out


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def model_verified(models: Path) -> bool:
    recorded = RunMetrics.read(models / "metrics.json").model.get("sha256")
    return recorded == file_sha256(models / "model.pt") and bool(load_checkpoint(models / "model.pt"))


# ---- item 1: a corrupt teacher is retrained; the finished student survives until its successor is complete


@pytest.mark.slow
def test_a_corrupt_teacher_is_retrained_and_the_student_is_replaced_only_when_complete(
    run: Path, tiny_siim: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    seed = run / "seed0"
    teacher, student = seed / "rotation_joint" / "models", seed / "distill" / "models"
    old_student = snapshot(student)
    assert "model.pt" in old_student and "metrics.json" in old_student
    truncate(teacher / "model.pt")
    # retraining the teacher reproduces its model.pt bit for bit (seeded): a new distillation temperature makes
    # the student retrain as well (the other bundles have no such key)
    args = pipeline_args(tiny_siim, run, "temperature=2")
    real_bundle = Runner.bundle
    calls: list[str] = []

    def watched(self: Runner, configs: list[Path], overrides: dict[str, Any], log_name: str, *a: Any) -> None:
        assert (student / "model.pt").is_file(), f"the finished student's model.pt is gone before {log_name}"
        calls.append(log_name)
        if log_name.endswith("distill-train") and fail_distillation:
            assert overrides["ckpt_dir"] != str(student), "the student must train into a staging folder"
            Path(overrides["ckpt_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(overrides["ckpt_dir"]) / "checkpoint_epoch=1.pt").write_bytes(b"half")  # what a crash leaves
            raise StepError(f"{log_name} failed (exit 1); log: distillation crashed")
        real_bundle(self, configs, overrides, log_name, *a)
        assert (student / "model.pt").is_file(), f"the student's model.pt is gone after {log_name}"

    monkeypatch.setattr(Runner, "bundle", watched)
    fail_distillation = True
    with pytest.raises(SystemExit, match=r"^error: .*distill-train failed"):
        run_pipeline(args)
    out = capsys.readouterr().out
    assert f"seed0/rotation_joint: {CORRUPT}; retraining" in out
    assert "rotation_joint: trained (model.pt changed or corrupt since training)" in out
    assert model_verified(teacher)  # the teacher was retrained in full
    assert snapshot(student) == old_student  # the failed distillation changed nothing of the finished student

    fail_distillation, calls[:] = False, []
    assert run_pipeline(args) == 0
    out = capsys.readouterr().out
    assert "rotation_joint: current" in out and "distill: trained (settings, data or teachers changed" in out
    assert any(c.endswith("distill-train") for c in calls)
    metrics = RunMetrics.read(student / "metrics.json")
    assert metrics.complete and model_verified(student) and metrics.evaluation("test")
    teachers = json.loads((seed / "teachers.json").read_text())["teachers"]
    assert teachers[0]["sha256"] == file_sha256(teacher / "model.pt")
    assert snapshot(student) != old_student
    assert not (seed / "distill.partial").exists() and not (seed / "distill.old").exists()


def test_no_retrain_stops_at_a_corrupt_model_and_changes_nothing(
    run: Path, tiny_siim: Path, capsys: pytest.CaptureFixture
) -> None:
    truncate(run / "seed0" / "rotation_joint" / "models" / "model.pt")
    before = snapshot(run / "seed0")
    with pytest.raises(SystemExit) as error:
        run_pipeline(pipeline_args(tiny_siim, run, "--no-retrain"))
    message = str(error.value)
    assert message.startswith("error: ") and f"seed0/rotation_joint: {CORRUPT}" in message
    assert "rotation_joint/models/model.pt" in message and "--no-retrain" in message
    assert snapshot(run / "seed0") == before


# ---- item 2: a corrupt model of a completed bundle is never reused or evaluated; loads name the file


def _step(run: Path, dataset: Path, name: str) -> Step:
    """The pipeline's step ``name`` of the run (the same overrides, hence the same fingerprint)."""
    overrides = {"epochs": 1, "val_interval": 1, "num_workers": 0, "output_prior": "off"}
    setting = RunSetting(dataset, run, "demo", overrides)
    data, sha = setting.seed_data(run / "seed0", 0.5, 0)
    return setting.step(name, name, run / "seed0" / name, data, {"datalist": sha})


def test_a_changed_or_corrupt_model_is_not_current_and_not_evaluated(
    run: Path, tiny_siim: Path, tmp_path: Path
) -> None:
    step = _step(run, tiny_siim, "baseline")
    assert plan_training(step, force=False).action == "current"
    truncate(step.model_file)
    plan = plan_training(step, force=False)
    assert (plan.action, plan.reason, plan.folder) == ("train", CORRUPT, step.staging)
    with pytest.raises(StepError, match=rf"seed0/baseline: {CORRUPT} \(.*baseline/models/model.pt\)"):
        evaluate_step(Runner(1, 1, tmp_path / "logs"), step)
    # a valid checkpoint that is not the one training saved is not trusted either
    shutil.copy(run / "seed0" / "rotation_joint" / "models" / "model.pt", step.model_file)
    assert plan_training(step, force=False).reason == CORRUPT
    with pytest.raises(StepError, match=CORRUPT):
        evaluate_step(Runner(1, 1, tmp_path / "logs"), step)
    # nor is a corrupt checkpoint of an interrupted retraining resumed from
    shutil.copytree(step.out, step.staging)
    metrics = json.loads((step.staging / "models" / "metrics.json").read_text())
    metrics["training"]["status"] = "running"
    (step.staging / "models" / "metrics.json").write_text(json.dumps(metrics))
    assert plan_training(step, force=False).action == "resume"
    truncate(step.staging / "models" / "checkpoint_epoch=1.pt")
    plan = plan_training(step, force=False)
    assert (plan.action, plan.reason) == ("train", "its checkpoint checkpoint_epoch=1.pt is unreadable or corrupt")


def test_every_checkpoint_load_names_a_corrupt_file(run: Path, tmp_path: Path) -> None:
    good = run / "seed0" / "baseline" / "models" / "model.pt"
    bad = tmp_path / "model.pt"
    shutil.copy(good, bad)
    truncate(bad)
    corrupt = rf"{bad}: unreadable or corrupt checkpoint \("
    with pytest.raises(CheckpointError, match=corrupt):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(SystemExit, match=rf"^error: {corrupt}"):
        require_loadable(bad)
    assert require_loadable(good) == str(good)
    with pytest.raises(BundleZipError, match=corrupt):
        load_weights(bad)
    with pytest.raises(CheckpointError, match=rf"{corrupt}.*delete it"):
        with_pretrained(torch.nn.Linear(1, 1), str(bad))  # type: ignore[arg-type]
    entry = {"task": "rotation", "bundle": "rotation_joint", "checkpoint": str(bad)}
    with pytest.raises(TeacherSelectionError, match=rf"teacher rotation: {corrupt}.*retrain rotation_joint"):
        load_teacher(entry, torch.nn.Linear(1, 1), "cpu")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"holds a list, not a dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_no_torch_load_outside_the_checkpoint_helper() -> None:
    for folder in ("common", "pipeline"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name != "checkpoints.py":
                assert "torch.load(" not in path.read_text().replace("``torch.load(", ""), path


# ---- item 12: an unknown --set key is an error with the known keys, close matches first


def test_unknown_set_keys_stop_every_protocol_command(tiny_siim: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as error:
        run_pipeline(pipeline_args(tiny_siim, out, "epoch=1", "imagesize=32"))
    lines = str(error.value).splitlines()
    assert lines[0] == "error: --set epoch: no bundle this run uses has this setting; did you mean epochs?"
    assert lines[1].startswith(
        "error: --set imagesize: no bundle this run uses has this setting; did you mean image_size"
    )
    assert lines[2].startswith("known keys of baseline, distill, rotation_joint: epochs, image_size")
    assert "val_interval" in lines[2] and "pretrain_epochs" not in lines[2]  # not a bundle of this run
    for main, extra in (
        (sweep_lambda, ["--table", str(tmp_path / "t.json"), "--tasks", "rotation"]),
        (compare_pretraining, ["--multidomain-datalist", str(tmp_path / "m.json")]),
    ):
        with pytest.raises(SystemExit, match=r"--set epoch: .*did you mean epochs"):
            main(["--dataset-dir", str(tiny_siim), "--out", str(out), *extra, "--set", "epoch=3"])
    assert not out.exists() and not (tmp_path / "t.json").exists()


def test_known_keys_of_some_bundle_and_nested_keys_pass() -> None:
    hssl_run = ["baseline", "hssl_pretrain", "distill"]
    check_overrides({"multidomain_datalist": "/m.json", "epochs": 2, "train#trainer#max_epochs": 3}, hssl_run)
    with pytest.raises(SystemExit, match=r"--set trian#trainer: .*did you mean train\b"):
        check_overrides({"trian#trainer": 1}, hssl_run)
    with pytest.raises(SystemExit, match=r"--set multidomain_datalist: no bundle this run uses"):
        check_overrides({"multidomain_datalist": "/m.json"}, ["baseline", "distill"])


# ---- item 13: a dry run prints the plan and why, and writes nothing


def test_dry_run_of_a_new_run_writes_nothing(tiny_siim: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "new"
    assert run_pipeline(pipeline_args(tiny_siim, out, "--dry-run")) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    for line in (
        "datalist: would-write",
        "baseline: would-train (not trained yet)",
        "rotation_joint: would-train (not trained yet)",
        "distill: would-train (its teachers are trained first)",
        "distill ensemble: would-evaluate (after training)",
    ):
        assert line in printed
    assert ": trained" not in printed and ": current" not in printed


def test_dry_run_of_a_finished_run_says_why_and_changes_nothing(
    run: Path, tiny_siim: Path, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(run)
    assert run_pipeline(pipeline_args(tiny_siim, run, "--dry-run")) == 0
    printed = capsys.readouterr().out
    assert "baseline: current (complete" in printed and "distill: current (complete" in printed
    assert (
        "distill ensemble: current (evaluated" in printed
        and "teacher selection: would-select (rotation: joint)" in printed
    )
    assert not any(f"would-{word}" in printed for word in ("train", "resume", "evaluate"))
    assert snapshot(run) == before

    seed = run / "seed0"
    truncate(seed / "rotation_joint" / "models" / "model.pt")
    truncate(seed / "distill" / "models" / "model.pt")
    staged = seed / "baseline.partial" / "models"  # an interrupted retraining of the baseline
    staged.mkdir(parents=True)
    metrics = json.loads((seed / "baseline" / "models" / "metrics.json").read_text())
    metrics["training"]["status"] = "running"
    (staged / "metrics.json").write_text(json.dumps(metrics))
    shutil.copy(seed / "baseline" / "models" / "checkpoint_epoch=1.pt", staged)
    (seed / "baseline" / "models" / "model.pt").write_bytes(b"not the trained model")
    before = snapshot(run)
    assert run_pipeline(pipeline_args(tiny_siim, run, "--dry-run", "--force")) == 0
    forced = capsys.readouterr().out
    assert "baseline: would-train (--force)" in forced
    assert run_pipeline(pipeline_args(tiny_siim, run, "--dry-run")) == 0
    printed = capsys.readouterr().out
    assert snapshot(run) == before
    for line in (
        "baseline: would-resume (an interrupted training with the same settings: "
        "baseline.partial/models/checkpoint_epoch=1.pt)",
        f"rotation_joint: would-train ({CORRUPT})",
        "teacher selection: would-select (after training rotation_joint)",
        "distill: would-train (its teachers are trained first)",
        "baseline: would-evaluate (after training)",
    ):
        assert line in printed


# ---- student variants (the KD sweep): trained beside the finished student from the same teachers


def test_student_arms_train_beside_the_finished_student(
    run: Path, tiny_siim: Path, capsys: pytest.CaptureFixture
) -> None:
    """Arms train beside the default student; an arm with its own ensemble (``teacher_combine max``) also has
    that ensemble evaluated on the test split, as its own report row."""
    seed = run / "seed0"
    student = file_sha256(seed / "distill" / "models" / "model.pt")
    arms = ["--student-arm", "t2_a05", "temperature=2", "alpha=0.5", "--student-arm", "max", "teacher_combine=max"]
    assert run_pipeline(pipeline_args(tiny_siim, run, *arms, "--dry-run")) == 0
    printed = capsys.readouterr().out
    assert "distill_t2_a05: would-train (not trained yet)" in printed
    assert "distill_max ensemble: would-evaluate (after training)" in printed
    assert "distill_t2_a05 ensemble" not in printed  # the same ensemble as the default student's
    assert run_pipeline(pipeline_args(tiny_siim, run, *arms)) == 0
    printed = capsys.readouterr().out
    assert "distill_t2_a05: trained" in printed and "distill: current" in printed
    assert "distill_max ensemble: evaluated" in printed
    assert file_sha256(seed / "distill" / "models" / "model.pt") == student  # the default student is untouched
    variant = RunMetrics.read(seed / "distill_t2_a05" / "models" / "metrics.json")
    kd = variant.section("distillation")
    assert variant.complete and kd["temperature"] == 2 and kd["alpha"] == 0.5 and variant.section("test")
    assert not variant.evaluation("test", ensemble=True)
    maximum = RunMetrics.read(seed / "distill_max" / "models" / "metrics.json")
    assert maximum.section("distillation")["teacher_combine"] == "max" and maximum.evaluation("test", ensemble=True)
    results = json.loads((run / "results.json").read_text())
    rows = list(results["summary"])
    assert rows[-4:] == ["teacher ensemble (max)", "student (distill)", "student (distill, max)",
                         "student (distill, t2_a05)"]  # fmt: skip
    assert rows.index("teacher ensemble") == rows.index("teacher ensemble (max)") - 1
    assert results["settings"]["student_arms"] == {
        "t2_a05": {"temperature": 2, "alpha": 0.5}, "max": {"teacher_combine": "max"}
    }  # fmt: skip
    report = (run / "report.md").read_text()
    assert "| student (distill, t2_a05) |" in report and "| teacher ensemble (max) |" in report
    assert run_pipeline(pipeline_args(tiny_siim, run, *arms)) == 0
    assert "distill_max ensemble: current" in capsys.readouterr().out  # evaluated once


def test_a_student_arm_with_an_unknown_key_stops_before_anything_runs(run: Path, tiny_siim: Path) -> None:
    before = snapshot(run)
    with pytest.raises(SystemExit, match=r"--student-arm t2: .*did you mean temperature"):
        run_pipeline(pipeline_args(tiny_siim, run, "--student-arm", "t2", "temprature=2"))
    with pytest.raises(SystemExit, match=r"--student-arm expects NAME"):
        run_pipeline(pipeline_args(tiny_siim, run, "--student-arm", "t.2", "temperature=2"))
    assert snapshot(run) == before


def test_a_split_without_a_usable_teacher_reports_no_student(
    tiny_siim: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # from an output prior of 1e-4, one epoch leaves every model blank: teacher selection refuses them all
    out = tmp_path / "blank"
    args = [*pipeline_args(tiny_siim, out), "output_prior=0.0001"]
    assert run_pipeline(args) == 0
    printed = capsys.readouterr().out
    assert "no usable teacher (blank on validation: rotation_joint); no student this split" in printed
    assert "distill" not in printed and not (out / "seed0" / "distill").exists()
    results = json.loads((out / "results.json").read_text())
    assert "baseline" in results["summary"] and "rotation_joint" in results["summary"]
    assert not any(row.startswith(("student", "teacher")) for row in results["summary"])
    assert results["selection"] == {"0": {}} and results["refused"]["0"][0]["bundle"] == "rotation_joint"
    assert "- run 0: **no student**" in (out / "report.md").read_text()
    assert run_pipeline([*args, "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert "no student this split" in planned and "stage 2: distill: none (no teacher)" in planned
    assert "distill ensemble" not in planned
