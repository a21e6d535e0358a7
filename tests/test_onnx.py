"""ONNX deployment: ``export_bundle.py --onnx`` and ``configs/inference_onnx.json`` (onnxruntime on the CPU)
against the PyTorch bundle on real chest X-rays, and the one-line errors."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from common.data.imaging import list_images
from common.deploy.onnx_export import TOLERANCE, OnnxParityError, export_onnx
from common.deploy.onnx_runtime import OnnxNetwork, record_path
from common.deploy.zoo import extract_bundle
from scripts.export_bundle import main as export_script
from tests.conftest import REPO, copy_bundle, read_json, run_bundle, shared_path, tiny_train_overrides

ONNX_CONFIGS = ("inference.json", "inference_onnx.json")


@pytest.fixture(scope="module")
def real_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five real chest X-rays: four SIIM-ACR DICOMs (JPEG Baseline, 1024 px) and a JPEG with a pneumothorax."""
    siim = shared_path("siim_real", "labelled", "dicom-images-train")
    ptx = shared_path("siim_sample", "real_ptx_mask_example", "cavitating-pneumonia-4-day0-PA.jpg")
    folder = tmp_path_factory.mktemp("real_images")
    for path in [*sorted(siim.glob("*.dcm"))[:4], ptx]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_siim: Path, real_images: Path) -> Path:
    """A copy of the baseline bundle trained one epoch on the tiny data (64 px); skipped first without real data."""
    bundle = copy_bundle("baseline", tmp_path_factory.mktemp("onnx_src") / "baseline")
    run_bundle([bundle / "configs" / "train.json"], *tiny_train_overrides(tiny_siim, bundle), cwd=bundle.parent)
    return bundle


@pytest.fixture(scope="module")
def exported(trained: Path, real_images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``scripts/export_bundle.py <bundle> --out <dist> --onnx --onnx-images <real images>`` (in this process:
    no second start-up of torch and MONAI): the zip and what it printed."""
    dist = tmp_path_factory.mktemp("dist")
    with _captured() as out:
        assert export_script([str(trained), "--out", str(dist), "--onnx", "--onnx-images", str(real_images)]) == 0
    return next(dist.glob("baseline_v*.zip")), out.getvalue()


@contextmanager
def _captured() -> Iterator[io.StringIO]:
    """Standard output of the block (a module fixture cannot take ``capsys``)."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        yield buffer


def parsed(bundle: Path, *configs: str) -> ConfigParser:
    """The bundle's configs merged in order, rooted at ``bundle``."""
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / c) for c in configs])
    parser["bundle_root"] = str(bundle)
    return parser


@pytest.mark.slow
@pytest.mark.realdata
def test_zip_holds_model_onnx_with_its_parity_record(exported: tuple[Path, str], real_images: Path) -> None:
    zip_path, stdout = exported
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        record = json.loads(zf.read("baseline/models/model.onnx.json"))
        manifest = zf.read("baseline/MANIFEST.sha256").decode()
    assert {"baseline/models/model.onnx", "baseline/configs/inference_onnx.json"} <= names
    assert "models/model.onnx" in manifest and "models/model.onnx.json" in manifest
    parity = record["parity"]
    assert sorted(parity["images"]) == sorted(p.name for p in real_images.iterdir())
    assert parity["max_abs_diff_probability"] <= TOLERANCE and parity["image_size"] == 64
    assert parity["masks_identical"] == parity["masks_compared"] == 5
    assert record["opset"] == 17 and record["dynamic_axes"]["image"] == {"0": "batch", "2": "height", "3": "width"}
    assert "masks identical 5/5" in stdout and "max |p_torch - p_onnx|" in stdout  # the figures are printed


@pytest.mark.slow
@pytest.mark.realdata
def test_onnx_bundle_inference_matches_pytorch_on_real_images(
    exported: tuple[Path, str], trained: Path, real_images: Path, tmp_path: Path
) -> None:
    unpacked = extract_bundle(exported[0], tmp_path / "unpacked")
    assert not (trained / "models" / "model.onnx").exists()  # the zip's own model.onnx is the one used
    # the user's command on the unpacked zip; the PyTorch reference in this process (same runner, no start-up)
    onnx_configs = [unpacked / "configs" / c for c in ONNX_CONFIGS]
    run_bundle(onnx_configs, "--input_dir", str(real_images), "--output_dir", str(tmp_path / "ort"), cwd=tmp_path)
    # model.onnx is fp32: the reference is inference.json in fp32 (its default on a bf16 CPU is bf16 autocast)
    workflow = ConfigWorkflow(
        str(trained / "configs" / "inference.json"),
        workflow_type="infer",
        **{"bundle_root": str(trained), "input_dir": str(real_images), "output_dir": str(tmp_path / "pt")},
        amp=False,
    )
    workflow.initialize()
    workflow.run()
    masks = sorted(p.name for p in (tmp_path / "pt").glob("*.png"))
    assert len(masks) == 5 and masks == sorted(p.name for p in (tmp_path / "ort").glob("*.png"))
    for name in masks:
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "ort" / name)), np.asarray(Image.open(tmp_path / "pt" / name))
        )
    # probabilities: the network inference_onnx.json builds against inference.json's (model.pt loaded by the run)
    ort_net = parsed(unpacked, *ONNX_CONFIGS).get_parsed_content("network")
    assert isinstance(ort_net, OnnxNetwork) and Path(ort_net.onnx_file) == unpacked / "models" / "model.onnx"
    network, preprocessing = (workflow.parser.get_parsed_content(k) for k in ("network", "preprocessing"))
    with torch.no_grad():
        x = torch.stack([preprocessing(item)["image"] for item in list_images(real_images)])
        diff = (torch.sigmoid(network.eval()(x)) - torch.sigmoid(ort_net(x))).abs().max()
    assert x.shape == (5, 1, 64, 64) and float(diff) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.realdata
def test_missing_model_onnx_stops_with_one_line_naming_it(trained: Path, real_images: Path, tmp_path: Path) -> None:
    missing = tmp_path / "models" / "model.onnx"
    overrides = {"input_dir": str(real_images), "output_dir": str(tmp_path / "out"), "onnx_file": str(missing)}
    workflow = ConfigWorkflow([str(trained / "configs" / c) for c in ONNX_CONFIGS], workflow_type="infer", **overrides)
    workflow.initialize()
    with pytest.raises(SystemExit) as stop:  # printed as the one last line by python -m monai.bundle run, exit 1
        workflow.run()
    message = str(stop.value.code)
    assert message.startswith(f"error: {missing} is missing") and "--onnx --in-place" in message
    assert "\n" not in message and not list((tmp_path / "out").glob("*.png"))


@pytest.mark.slow
@pytest.mark.realdata
def test_failed_parity_stops_the_export_and_leaves_no_model_onnx(trained: Path, real_images: Path) -> None:
    with pytest.raises(OnnxParityError, match=r"model\.onnx: ONNX output differs from PyTorch: max \|p_torch"):
        export_onnx(trained, real_images, tolerance=-1.0, max_images=1)  # a tolerance nothing can meet
    assert not list((trained / "models").glob("*.onnx*"))
    assert read_json(trained / "models" / "metrics.json")  # the bundle is otherwise untouched


def test_model_onnx_exported_from_another_model_pt_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "bundle" / "models"
    models.mkdir(parents=True)
    (models / "model.pt").write_bytes(b"retrained since")
    (models / "model.onnx").write_bytes(b"not loaded: refused first")
    record_path(models / "model.onnx").write_text(json.dumps({"model_pt_sha256": "0" * 64}))
    with pytest.raises(SystemExit, match=r"model\.onnx was exported from another model\.pt .*--onnx --in-place"):
        OnnxNetwork(models / "model.onnx", models / "model.pt")


def test_inference_benchmark_times_every_runtime_on_the_same_images() -> None:
    from pipeline.benchmark import time_inference

    seen: dict[str, list[float]] = {"eager": [], "onnx": []}
    runtimes = {name: (lambda x, name=name: seen[name].append(float(x.max()))) for name in seen}
    seconds = time_inference(runtimes, [torch.full((1, 1, 4, 4), float(i)) for i in range(3)], repeats=2)
    assert set(seconds) == set(seen) and all(s >= 0 for s in seconds.values())
    assert seen["eager"] == seen["onnx"] == [0.0, 1.0] + [0.0, 1.0, 2.0] * 2  # warm-up, then the same passes


def test_onnx_override_drops_only_the_checkpoint_loader() -> None:
    """inference_onnx.json replaces ``handlers`` whole: it must stay inference.json's list less the CheckpointLoader."""
    configs = REPO / "bundles" / "baseline" / "configs"
    handlers = read_json(configs / "inference.json")["handlers"]
    assert read_json(configs / "inference_onnx.json")["handlers"] == [
        h for h in handlers if h["_target_"] != "CheckpointLoader"
    ]
