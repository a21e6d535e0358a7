"""The baseline bundle as MONAI tools and users drive it: properties, metadata, export, CLI runs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from PIL import Image

from common.data.datalist import load_or_build_datalist
from common.utils.io import file_sha256
from tests.conftest import BASELINE, REPO, read_json, run_bundle, run_torchrun, shared_path, tiny_train_overrides

SCHEMA = REPO / "common" / "deploy" / "schemas" / "bundle_meta_schema.json"
CONFIGS = BASELINE / "configs"


def _copy_bundle(dest: Path) -> Path:
    """A fresh copy of the bundle's configs/docs (no outputs), so tests never touch the repo's models/."""
    shutil.copytree(BASELINE, dest, ignore=shutil.ignore_patterns("models", "cache", "logs", "eval"))
    (dest / "models").mkdir()
    return dest


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_siim: Path) -> Path:
    """The bundle copied to a temp folder and trained one epoch from an unrelated working directory."""
    bundle = _copy_bundle(tmp_path_factory.mktemp("bundle") / "baseline")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    overrides = [o for o in tiny_train_overrides(tiny_siim, bundle) if o not in ("--bundle_root", str(bundle))]
    run_bundle([bundle / "configs" / "train.json"], *overrides, cwd=elsewhere)
    assert list(elsewhere.iterdir()) == []  # nothing lands in the current directory
    return bundle


def test_train_and_infer_properties(tiny_siim: Path, tmp_path: Path) -> None:
    train = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        workflow_type="train",
        bundle_root=str(tmp_path),
        dataset_dir=str(tiny_siim),
    )
    train.initialize()
    assert train.check_properties() == []
    infer = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        workflow_type="infer",
        bundle_root=str(tmp_path),
        input_dir=str(tiny_siim),
    )
    infer.initialize()
    assert infer.check_properties() == []
    assert train.bundle_root == str(tmp_path)


def test_bundle_root_defaults_to_the_bundle_folder(tiny_siim: Path) -> None:
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), workflow_type="train", dataset_dir=str(tiny_siim)
    )
    workflow.initialize()
    assert workflow.bundle_root == str(BASELINE)
    assert workflow.parser.get_parsed_content("ckpt_dir") == str(BASELINE / "models")


def test_metadata_verifies_against_the_kept_schema() -> None:
    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA), hash_val=digest, hash_type="sha256")
    meta = read_json(CONFIGS / "metadata.json")
    assert meta["version"] in meta["changelog"]
    assert list(meta["network_data_format"]["inputs"]) == ["image"]
    assert list(meta["network_data_format"]["outputs"]) == ["pred"]


def test_net_in_out() -> None:
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
    )


@pytest.mark.slow
def test_cli_training_writes_model_and_metrics(trained: Path) -> None:
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # a plain state_dict
    metrics = read_json(trained / "models" / "metrics.json")
    assert metrics["training"]["status"] == "complete" and metrics["training"]["epochs_trained"] == 1
    assert set(metrics["validation"]) >= {"dice", "dice_positive", "iou", "best_epoch"}
    assert 0.0 <= metrics["validation"]["dice"] <= 1.0
    assert metrics["config"]["image_size"] == 64  # the overrides that produced the numbers
    # what inference needs travels with the model, and the finished model's checksum
    assert metrics["model"]["image_size"] == 64 and metrics["model"]["min_pred_area_fraction"] == 0.002
    assert metrics["model"]["sha256"] == file_sha256(trained / "models" / "model.pt")
    assert (trained / "logs").is_dir() and any((trained / "logs").iterdir())  # TensorBoard events
    assert (trained / "models" / "checkpoint_epoch=1.pt").is_file()


@pytest.mark.slow
def test_ckpt_export_torchscript_reloads(trained: Path, tmp_path: Path) -> None:
    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(trained / "models" / "model.pt"),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        bundle_root=str(trained),
        input_shape=[1, 1, 64, 64],
        use_trace=True,
    )
    scripted = torch.jit.load(str(ts))
    from monai.networks.nets import UNet

    eager = UNet(2, 1, 1, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm="batch")
    eager.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    eager.eval()
    x = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(scripted(x), eager(x))


@pytest.mark.slow
def test_resume_continues_the_epoch_count(trained: Path, tiny_siim: Path, tmp_path: Path) -> None:
    bundle = _copy_bundle(tmp_path / "b")
    for f in ("checkpoint_epoch=1.pt", "model.pt", "metrics.json"):
        shutil.copy(trained / "models" / f, bundle / "models" / f)
    proc = run_bundle(
        [bundle / "configs" / "train.json"],
        *tiny_train_overrides(tiny_siim, bundle, epochs=2),
        "--resume",
        "true",
        cwd=tmp_path,
    )
    assert "resuming from iteration" in proc.stdout + proc.stderr
    assert "epoch 1 until 2 epochs" in proc.stdout + proc.stderr  # started at epoch 1, not 0
    metrics = read_json(bundle / "models" / "metrics.json")
    assert metrics["training"]["epochs_trained"] == 2 and metrics["training"]["status"] == "complete"
    before = read_json(trained / "models" / "metrics.json")["validation"]
    assert metrics["validation"]["dice"] >= before["dice"]  # the best so far survives the resume
    assert (bundle / "models" / "checkpoint_epoch=2.pt").is_file()


@pytest.mark.slow
def test_evaluate_writes_test_metrics(trained: Path, tiny_siim: Path, tmp_path: Path) -> None:
    # twice: the second run reads the images from the persistent cache, which must keep their metadata
    for _ in range(2):
        run_bundle(
            [trained / "configs" / "train.json", trained / "configs" / "evaluate.json"],
            *tiny_train_overrides(tiny_siim, trained),
            cwd=tmp_path,
        )
    metrics = read_json(trained / "models" / "metrics.json")
    n_test = len(load_or_build_datalist(str(tiny_siim))["test"])
    assert metrics["test"]["n_images"] == n_test > 0 and set(metrics["test"]) >= {
        "dice",
        "dice_positive",
        "iou",
    }
    assert metrics["validation"] is not None and metrics["training"]["status"] == "complete"  # kept
    assert (trained / "eval" / "test" / "dice_raw.csv").is_file()  # per-image details


@pytest.mark.slow
def test_inference_writes_masks_in_input_geometry(trained: Path, tiny_siim: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    dcm = sorted(tiny_siim.rglob("*.dcm"))[0]
    shutil.copy(dcm, inputs / "chest.dcm")
    pixels = pydicom.dcmread(dcm).pixel_array
    Image.fromarray(np.asarray(Image.fromarray(pixels).resize((90, 70)))).convert("RGB").save(inputs / "photo.png")
    nib.save(
        nib.Nifti1Image(pixels[:100, :80].astype(np.float32), np.diag([0.2, 0.3, 1, 1])),
        inputs / "vol.nii.gz",
    )
    out = tmp_path / "masks"
    run_bundle(
        [trained / "configs" / "inference.json"],
        "--input_dir",
        str(inputs),
        "--output_dir",
        str(out),
        cwd=tmp_path,  # no --image_size: the model's metrics.json says it was trained at 64 px
    )
    chest = np.asarray(Image.open(out / "chest_seg.png"))
    photo = np.asarray(Image.open(out / "photo_seg.png"))
    vol = nib.load(out / "vol_seg.nii.gz")
    assert chest.shape == (128, 128) and photo.shape == (70, 90) and vol.shape == (100, 80)
    np.testing.assert_allclose(vol.affine, np.diag([0.2, 0.3, 1, 1]))
    for mask in (chest, photo, np.asarray(vol.dataobj)):
        assert set(np.unique(mask)) <= {0, 1}


@pytest.mark.slow
def test_inference_takes_the_training_settings_from_the_model(trained: Path, tmp_path: Path) -> None:
    """image_size and the post-processing area travel with model.pt (metrics.json); overrides still win;
    a model without metrics.json gets the config's defaults."""

    def parsed(ckpt_file: Path, *extra: str) -> tuple[int, float]:
        overrides = {"bundle_root": str(trained), "ckpt_file": str(ckpt_file)}
        overrides.update(dict(zip(extra[::2], extra[1::2], strict=True)))
        workflow = ConfigWorkflow(str(trained / "configs" / "inference.json"), workflow_type="infer", **overrides)
        parser = workflow.parser
        return parser.get_parsed_content("image_size"), parser.get_parsed_content("min_pred_area_fraction")

    assert parsed(trained / "models" / "model.pt") == (64, 0.002)
    assert parsed(trained / "models" / "model.pt", "image_size", 96)[0] == 96
    bare = tmp_path / "model.pt"
    shutil.copy(trained / "models" / "model.pt", bare)
    assert parsed(bare) == (256, 0.002)


@pytest.mark.slow
def test_same_seed_same_numbers(tiny_siim: Path, tmp_path: Path) -> None:
    results = []
    for name in ("a", "b"):
        bundle = _copy_bundle(tmp_path / name)
        overrides = tiny_train_overrides(tiny_siim, bundle, epochs=2)
        overrides[overrides.index("--num_workers") + 1] = "2"  # the default loader, workers included
        run_bundle([bundle / "configs" / "train.json"], *overrides, cwd=tmp_path)
        results.append(
            (
                read_json(bundle / "models" / "metrics.json")["validation"],
                torch.load(bundle / "models" / "model.pt"),
            )
        )
    assert results[0][0] == results[1][0]
    for key, value in results[0][1].items():
        torch.testing.assert_close(value, results[1][1][key], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.realdata
def test_real_cxr_lungs_short_training(tmp_path: Path) -> None:
    data = shared_path("cxr_lungs")
    bundle = _copy_bundle(tmp_path / "b")
    overrides = tiny_train_overrides(data, bundle, epochs=1)
    run_bundle([bundle / "configs" / "train.json"], *overrides, "--labelled_fraction", "0.2", cwd=tmp_path)
    metrics = read_json(bundle / "models" / "metrics.json")
    assert metrics["training"]["counts"]["training_labelled"] == 14
    assert metrics["validation"]["n_images"] == 15 and metrics["validation"]["dice"] is not None


@pytest.mark.slow
def test_multi_gpu_config_trains_with_gloo_on_two_processes(tiny_siim: Path, tmp_path: Path) -> None:
    bundle = _copy_bundle(tmp_path / "b")
    configs = [bundle / "configs" / "train.json", bundle / "configs" / "multi_gpu_train.json"]
    overrides = [o for o in tiny_train_overrides(tiny_siim, bundle) if o not in ("--bundle_root", str(bundle))]
    run_torchrun(configs, *overrides, cwd=tmp_path)
    assert sorted(p.name for p in (bundle / "models").iterdir()) == [
        "checkpoint_epoch=1.pt",
        "metrics.json",
        "model.pt",
    ]
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # loadable by the single-process inference.json
    assert read_json(bundle / "models" / "metrics.json")["training"]["status"] == "complete"
