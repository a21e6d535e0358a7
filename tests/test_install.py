"""After a pipeline run, the user's own bundle commands work on the installed models (issue: `make demo`
then `python -m monai.bundle run --config_file bundles/distill/configs/train.json`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.distill.teachers import TeacherSelectionError, read_selection
from scripts.install_run import main as install_run
from scripts.run_pipeline import main as run_pipeline
from tests.conftest import REPO, read_json, run_bundle


def _bundles_copy(dest: Path) -> Path:
    """The repository's bundles without any outputs (tests never touch the repo's models/)."""
    shutil.copytree(REPO / "bundles", dest, ignore=shutil.ignore_patterns("models", "cache", "logs", "eval"))
    for bundle in dest.iterdir():
        (bundle / "models").mkdir()
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, tiny_siim: Path) -> tuple[Path, Path]:
    """A tiny pipeline run (baseline, rotation_joint, distill) installed into a copy of the bundles."""
    work = tmp_path_factory.mktemp("install")
    run = work / "run"
    args = [
        "--dataset-dir", str(tiny_siim), "--out", str(run), "--scale", "demo", "--labelled-fraction", "0.5",
        "--tasks", "rotation", "--skip", "multitask_joint", "rotation_pretrain", "mean_teacher", "--jobs", "1",
        "--set", "epochs=1", "val_interval=1", "num_workers=0", "output_prior=off",
    ]  # fmt: skip
    assert run_pipeline(args) == 0
    bundles = _bundles_copy(work / "bundles")
    assert install_run([str(run / "seed0"), "--bundles-dir", str(bundles)]) == 0
    return run / "seed0", bundles


@pytest.mark.slow
def test_install_puts_each_trained_model_into_its_bundle(installed: tuple[Path, Path]) -> None:
    seed_dir, bundles = installed
    for name in ("baseline", "rotation_joint", "distill"):
        for file in ("model.pt", "metrics.json"):
            assert (bundles / name / "models" / file).read_bytes() == (seed_dir / name / "models" / file).read_bytes()
    assert not (bundles / "rotation_pretrain" / "models" / "model.pt").exists()  # not trained in this run
    selection = read_json(bundles / "distill" / "models" / "teachers.json")
    assert [t["checkpoint"] for t in selection["teachers"]] == ["../../rotation_joint/models/model.pt"]
    entries = read_selection(bundles / "distill" / "models" / "teachers.json")  # verified, relative to the file
    assert Path(entries[0]["checkpoint"]).resolve() == (bundles / "rotation_joint" / "models" / "model.pt").resolve()


@pytest.mark.slow
def test_users_commands_evaluate_infer_and_retrain_from_another_folder(
    installed: tuple[Path, Path], tiny_siim: Path, tmp_path: Path
) -> None:
    seed_dir, bundles = installed
    configs = bundles / "distill" / "configs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = ["--dataset_dir", str(tiny_siim)]
    # evaluate reproduces the pipeline's test numbers for the installed student (its image size and its
    # post-processing tuned on validation come from the model's metrics.json, the split from the same seed)
    run_bundle([configs / "train.json", configs / "evaluate.json"], *data, "--num_workers", "0", cwd=elsewhere)
    ours = read_json(bundles / "distill" / "models" / "metrics.json")["test"]
    pipeline = read_json(seed_dir / "distill" / "models" / "metrics.json")["test_tuned"]
    for key in ("dice", "dice_positive", "iou", "n_images"):
        assert ours[key] == pytest.approx(pipeline[key], abs=1e-6), key
    # inference writes masks with the installed student
    out = tmp_path / "masks"
    run_bundle([configs / "inference.json"], "--input_dir", str(tiny_siim), "--output_dir", str(out), cwd=elsewhere)
    masks = sorted(out.rglob("*_seg.png"))  # the input subfolders are mirrored
    assert len(masks) == len(list(tiny_siim.rglob("*.dcm")))
    assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 1}
    # the user's command: retrain the student from the installed teachers
    before = torch.load(bundles / "distill" / "models" / "model.pt", weights_only=True)
    run_bundle([configs / "train.json"], *data, "--epochs", "1", "--num_workers", "0", cwd=elsewhere)
    metrics = read_json(bundles / "distill" / "models" / "metrics.json")
    assert metrics["training"]["status"] == "complete"
    after = torch.load(bundles / "distill" / "models" / "model.pt", weights_only=True)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_a_different_model_in_the_bundle_is_kept_as_a_backup(installed: tuple[Path, Path], tmp_path: Path) -> None:
    seed_dir, _ = installed
    bundles = _bundles_copy(tmp_path / "bundles")
    users = bundles / "baseline" / "models" / "model.pt"
    users.write_bytes(b"a model the user trained in place")
    assert install_run([str(seed_dir), "--bundles-dir", str(bundles)]) == 0
    backups = list((bundles / "baseline" / "models").glob("backup-*/model.pt"))
    assert len(backups) == 1 and backups[0].read_bytes() == b"a model the user trained in place"
    assert users.read_bytes() == (seed_dir / "baseline" / "models" / "model.pt").read_bytes()
    assert install_run([str(seed_dir), "--bundles-dir", str(bundles)]) == 0  # identical now: nothing moved
    assert len(list((bundles / "baseline" / "models").glob("backup-*"))) == 1


def test_install_refuses_a_corrupt_model_and_a_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert install_run([str(tmp_path / "nothing"), "--bundles-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    models = tmp_path / "run" / "seed0" / "baseline" / "models"
    models.mkdir(parents=True)
    (models / "model.pt").write_bytes(b"truncated")
    metrics = {"training": {"status": "complete"}, "model": {"sha256": "0" * 64}}
    (models / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "bundles" / "baseline" / "configs").mkdir(parents=True)
    assert install_run([str(tmp_path / "run" / "seed0"), "--bundles-dir", str(tmp_path / "bundles")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.pt changed or is corrupt since training" in err and str(models) in err
    assert not (tmp_path / "bundles" / "baseline" / "models" / "model.pt").exists()


def test_missing_selection_names_the_pipeline_run_and_the_commands(tmp_path: Path) -> None:
    # <repo>/bundles/distill/models/teachers.json looks for <repo>/runs/*/seed*/teachers.json
    with pytest.raises(TeacherSelectionError, match=r"train the stage-1 bundles"):  # no run: how to make one
        read_selection(tmp_path / "bundles" / "distill" / "models" / "teachers.json")
    seed_dir = tmp_path / "runs" / "demo" / "seed0"
    seed_dir.mkdir(parents=True)
    (seed_dir / "teachers.json").write_text('{"teachers": []}')
    with pytest.raises(TeacherSelectionError) as error:
        read_selection(tmp_path / "bundles" / "distill" / "models" / "teachers.json")
    message = str(error.value)
    assert f"python scripts/install_run.py {seed_dir}" in message
    assert f"--teachers_file {seed_dir}/teachers.json" in message


def test_pipeline_install_option_must_name_one_of_the_seeds(tiny_siim: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"--install 3: not one of the run's seeds \[0\]"):
        run_pipeline(["--dataset-dir", str(tiny_siim), "--out", str(tmp_path / "run"), "--install", "3"])
