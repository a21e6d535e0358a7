"""Bad inputs and settings, each a one-line answer: unreadable images skipped and summarised by inference,
colliding mask names kept apart, bad bundle overrides and unusable model files or output folders refused
before any data is read or the model runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.data import MetaTensor
from PIL import Image

from common.data.transforms import LoadXrayd
from common.deploy.masks import SUMMARY_FILE, SaveMaskd
from common.utils.settings import check_settings
from tests.conftest import BASELINE, copy_bundle, read_json, run_bundle, tiny_train_overrides


def bundle_cli(configs: list[Path], *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` as a subprocess, whatever its exit status."""
    config_arg = str(configs[0]) if len(configs) == 1 else repr([str(c) for c in configs])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg, *overrides]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def png(path: Path, seed: int = 0, shape: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)).save(path)
    return path


def corrupt(path: Path, data: bytes = b"not an image at all") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_siim: Path) -> Path:
    """The baseline bundle copied to a temp folder and trained one epoch at 64 px."""
    bundle = copy_bundle("baseline", tmp_path_factory.mktemp("faults") / "baseline")
    run_bundle([bundle / "configs" / "train.json"], *tiny_train_overrides(tiny_siim, bundle), cwd=bundle.parent)
    return bundle


def infer(bundle: Path, inputs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ("--input_dir", str(inputs), "--output_dir", str(out), *extra)
    return bundle_cli([bundle / "configs" / "inference.json"], *args, cwd=inputs.parent)


# ----------------------------------------------------------------------------- in process


def test_loader_skips_an_unreadable_image_only_when_asked(tmp_path: Path) -> None:
    bad = corrupt(tmp_path / "bad.png")
    d = LoadXrayd(on_error="skip")({"image": str(bad)})
    assert d["read_error"].startswith("unreadable image") and d["image"].shape[0] == 1
    assert d["image"].meta["filename_or_obj"] == str(bad)
    assert LoadXrayd(on_error="skip")({"image": str(png(tmp_path / "ok.png"))})["read_error"] == ""
    with pytest.raises(ValueError, match=r"bad\.png"):  # training, evaluation, MONAI Label: still an error
        LoadXrayd()({"image": str(bad)})


def test_inference_config_skips_only_in_its_own_dataset(tmp_path: Path) -> None:
    """MONAI Label runs ``preprocessing`` itself: it must still raise; the CLI's dataset skips."""
    workflow = ConfigWorkflow(
        str(BASELINE / "configs" / "inference.json"), workflow_type="infer", bundle_root=str(tmp_path)
    )
    workflow.initialize()
    pre = workflow.parser.get_parsed_content("preprocessing")
    skipping = workflow.parser.get_parsed_content("dataset#transform")
    assert pre.transforms[0].on_error == "raise" and skipping.transforms[0].on_error == "skip"
    assert skipping.transforms[1] is pre.transforms[1]  # Invertd over preprocessing inverts what was applied


def item(path: Path) -> dict:
    meta = {"filename_or_obj": str(path), "source_affine": torch.eye(4, dtype=torch.float64)}
    return {"image": MetaTensor(torch.zeros(1, 1, 1), meta=meta), "pred": np.ones((8, 6), np.uint8)}


def test_saver_never_overwrites_a_mask_of_the_same_run(tmp_path: Path) -> None:
    save = SaveMaskd(output_dir=tmp_path / "out")  # no input_dir: flat names
    first = save(item(png(tmp_path / "a" / "x.png")))["pred_path"]
    second = save(item(png(tmp_path / "b" / "x.png")))["pred_path"]
    assert Path(first).name == "x_seg.png" and Path(second).name == "x_seg_2.png"


def test_training_settings_name_every_bad_value(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        check_settings(dataset_dir=str(tmp_path), epochs="abc", learning_rate=0, resume="false")
    text = str(e.value)
    assert text.startswith("error: ") and "\n" not in text
    assert "--epochs 'abc'" in text and "--learning_rate 0" in text and "--resume 'false'" in text
    assert check_settings(dataset_dir=str(tmp_path), epochs=2, image_size=64, resume=True)


def test_inference_settings_refuse_a_random_bytes_model(tmp_path: Path) -> None:
    model = corrupt(tmp_path / "model.pt", os.urandom(4096))
    png(tmp_path / "in" / "a.png")
    with pytest.raises(SystemExit, match=r"model\.pt: unreadable or corrupt"):
        check_settings(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), ckpt_file=str(model))


# ----------------------------------------------------------------------------- bundle CLI: training settings


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("dataset_dir", "{tmp}/nowhere", "error: --dataset_dir '{tmp}/nowhere': no such folder"),
        ("labelled_fraction", "1.5", "error: --labelled_fraction 1.5: must be a number in (0, 1]"),
        ("epochs", "0", "error: --epochs 0: must be a whole number >= 1"),
        ("epochs", "abc", "error: --epochs 'abc': must be a whole number >= 1"),
        ("learning_rate", "x", "error: --learning_rate 'x': must be a number > 0"),
        ("image_size", "abc", "error: --image_size 'abc': must be a whole number >= 16 and a multiple of 16"),
    ],
)
def test_bad_training_override_is_one_line_before_any_data(
    option: str, value: str, expected: str, tiny_siim: Path, tmp_path: Path
) -> None:
    bundle = copy_bundle("baseline", tmp_path / "b")
    overrides = tiny_train_overrides(tiny_siim, bundle)
    value, expected = value.format(tmp=tmp_path), expected.format(tmp=tmp_path)
    if f"--{option}" in overrides:
        overrides[overrides.index(f"--{option}") + 1] = value
    else:
        overrides += [f"--{option}", value]
    proc = bundle_cli([bundle / "configs" / "train.json"], *overrides, cwd=tmp_path)
    assert proc.returncode != 0
    assert last_line(proc.stderr).startswith(expected), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (bundle / "models" / "metrics.json").exists()
    assert not (bundle / "cache").exists() and not (bundle / "logs").exists()  # no datalist built, nothing read


# ----------------------------------------------------------------------------- bundle CLI: inference


@pytest.mark.slow
def test_unreadable_images_first_and_last_are_skipped(trained: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    corrupt(inputs / "000_bad.png")  # sorted first
    png(inputs / "a.png", 1)
    png(inputs / "b.png", 2)
    corrupt(inputs / "zzz.dcm", os.urandom(600))  # sorted last
    out = tmp_path / "out"
    proc = infer(trained, inputs, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "a_seg.png").is_file() and (out / "b_seg.png").is_file()
    summary = read_json(out / SUMMARY_FILE)
    assert summary["written"] == 2
    assert [Path(s["image"]).name for s in summary["skipped"]] == ["000_bad.png", "zzz.dcm"]
    assert all(s["reason"] for s in summary["skipped"])
    assert "2 masks written" in proc.stdout + proc.stderr and "2 inputs skipped" in proc.stdout + proc.stderr
    # --strict: the same run fails, naming the summary
    proc = infer(trained, inputs, tmp_path / "strict", "--strict", "true")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert last_line(proc.stderr).startswith("error: --strict true: 2 of 4 inputs could not be read")


@pytest.mark.slow
def test_nothing_readable_is_an_error(trained: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    corrupt(inputs / "a.png")
    corrupt(inputs / "b.dcm", os.urandom(600))
    proc = infer(trained, inputs, tmp_path / "out")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert last_line(proc.stderr).startswith("error: no mask written: none of the 2 inputs could be read")
    assert len(read_json(tmp_path / "out" / SUMMARY_FILE)["skipped"]) == 2


@pytest.mark.slow
def test_colliding_stems_get_distinct_masks(trained: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    for i, name in enumerate(("x.png", "x.jpg", "sub/x.png", "y.png")):
        png(inputs / name, i, (40 + i, 30))
    out = tmp_path / "out"
    proc = infer(trained, inputs, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["sub/x_seg.png", "x.jpg_seg.png", "x.png_seg.png", "y_seg.png"]
    assert np.asarray(Image.open(out / "sub" / "x_seg.png")).shape == (42, 30)  # each mask its own input's
    assert np.asarray(Image.open(out / "x.jpg_seg.png")).shape == (41, 30)


def test_random_bytes_model_is_named_as_corrupt(tmp_path: Path) -> None:
    bundle = copy_bundle("baseline", tmp_path / "b")
    corrupt(bundle / "models" / "model.pt", os.urandom(4096))
    png(tmp_path / "in" / "a.png")
    proc = infer(bundle, tmp_path / "in", tmp_path / "out")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line = last_line(proc.stderr)
    assert line.startswith(f"error: {bundle / 'models' / 'model.pt'}: unreadable or corrupt"), line


@pytest.mark.slow
def test_unwritable_output_folder_is_refused_before_the_model_runs(trained: Path, tmp_path: Path) -> None:
    """Root ignores permission bits, so the folder is made unwritable by lying under a regular file."""
    png(tmp_path / "in" / "a.png")
    (tmp_path / "afile").write_text("a file, not a folder")
    out = tmp_path / "afile" / "masks"
    proc = infer(trained, tmp_path / "in", out)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert last_line(proc.stderr).startswith(f"error: --output_dir '{out}': cannot create or write the folder")
    assert "Engine run" not in proc.stdout + proc.stderr  # the evaluator never started
