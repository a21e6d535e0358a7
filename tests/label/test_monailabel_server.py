"""MONAI Label 0.8.5 serves (and trains) the distilled student bundle, end to end and offline.

Runs only in .venv-label (``make test-label``; pydicom 2.4, monailabel 0.8.5). The session trains a
tiny student the way tests/test_distill_bundle.py does (synthetic SIIM data, two one-epoch teachers,
common.distill.selection, one distillation epoch) and serves it the way users do, through
``scripts/serve_label.py`` (``make serve``): the command deploys a copy of it with the ``common``
package vendored into the bundle folder into MONAI Label's ``monaibundle`` app and becomes
``monailabel start_server`` on 127.0.0.1; the tests ask it for masks over HTTP, starting with the
example request the command prints. The server gets no PYTHONPATH: it imports ``common`` from the
deployed bundle only, as a server without this repository would.

The one-epoch student is not a useful model (it marks nearly every pixel), so model quality is not
tested: the server's mask must equal what the bundle's own inference command writes for the same
image, which checks that MONAI Label runs the bundle's pre/post-processing and returns the mask on
the source's pixel grid.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="MONAI Label tests run in .venv-label: `make test-label`")

import pydicom
import requests
from PIL import Image

from common.data.demo import make_demo_siim
from common.data.rle import decode_union
from common.distill.selection import select_teachers
from tests.conftest import copy_bundle, free_port, tiny_train_overrides

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_PNG = SHARED_DATA / "cxr_lungs" / "images" / "ARDSSevere.png"  # 790 x 631 RGB: not square
REAL_JPEG = SHARED_DATA / "cxr_lungs" / "images" / "kjr-21-e24-g001-l-a.jpg"  # 328 x 237 RGB: a PNG mask back
REAL_DICOM_DIR = SHARED_DATA / "siim_sample" / "dicom-images-train"  # one 1024 x 1024 JPEG Baseline CR
MODEL = "distill"
SERVER_START_TIMEOUT_S = 180
INFER_TIMEOUT_S = 120
TRAIN_TIMEOUT_S = 400

# MONAI Label's writer (monailabel.transform.writer.write_itk) transposes every 2D result, because MONAI's
# own loaders give (x, y) arrays: the bundles' inference postprocessing therefore ends in that order and
# their own writer turns it back (id ``image_axes``). MONAI Label also replaces train#dataset#data and
# validate#dataset#data, so nothing in train.json may need the bundle's datalist (dataset_dir) to train.


def _env() -> dict[str, str]:
    """Subprocess environment with the repository importable (the label env does not install it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = str(REPO)
    return env


def _bundle_run(config: Path, *args: str, cwd: Path) -> None:
    """``python -m monai.bundle run`` in this environment; fail the test with its output on error."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(
            f"bundle run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )


def _read_png(source: Path | io.BytesIO) -> np.ndarray:
    with Image.open(source) as im:
        return np.asarray(im)


@dataclass(frozen=True)
class Case:
    """One image offered to the server: its datastore id, file and (rows, cols)."""

    name: str
    image_id: str
    path: Path
    shape: tuple[int, int]


@dataclass(frozen=True)
class Deployment:
    """A running MONAI Label server and what the tests compare its answers with."""

    url: str
    bundle: Path  # the deployed copy under <app>/model/distill
    printed: str  # what scripts/serve_label.py printed before it became the server
    cases: dict[str, Case]
    reference: dict[str, np.ndarray]  # masks the bundle's own inference command wrote, by case name
    siim: Path  # the synthetic training data (for the datastore labels)
    log: Path


@pytest.fixture(scope="session")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distilled student bundle trained here: two one-epoch teachers, their selection, one epoch."""
    root = tmp_path_factory.mktemp("pipeline")
    siim = make_demo_siim(root / "siim", n_images=24, size=128, seed=3)
    for task, seed in (("rotation", 1), ("genesis", 2)):
        bundle = copy_bundle("baseline", root / f"{task}_joint")
        overrides = [o for o in tiny_train_overrides(siim, bundle) if o not in ("--bundle_root", str(bundle))]
        _bundle_run(
            bundle / "configs" / "train.json", *overrides, "--labelled_fraction", "0.5", "--seed", str(seed), cwd=root
        )
    distill = copy_bundle(MODEL, root / MODEL)
    assert select_teachers(root, ["rotation", "genesis"], allow_missing=True) == 0
    overrides = [o for o in tiny_train_overrides(siim, distill) if o not in ("--bundle_root", str(distill))]
    _bundle_run(distill / "configs" / "train.json", *overrides, "--labelled_fraction", "0.5", cwd=root)
    assert (distill / "models" / "model.pt").is_file()
    return distill


def _sources(folder: Path, siim: Path) -> dict[str, Case]:
    """The images to segment: a synthetic DICOM and a non-square synthetic PNG, plus the real ones if present."""
    folder.mkdir()
    dicom = sorted((siim / "dicom-images-train").rglob("*.dcm"))[1]
    shutil.copy(dicom, folder / dicom.name)
    pixels = pydicom.dcmread(dicom).pixel_array
    Image.fromarray(pixels[:, 16:112]).save(folder / "synthetic_crop.png")  # 128 rows x 96 cols
    cases = {
        "synthetic_dicom": Case("synthetic_dicom", dicom.stem, folder / dicom.name, pixels.shape),
        "synthetic_png": Case("synthetic_png", "synthetic_crop", folder / "synthetic_crop.png", (128, 96)),
    }
    for name, real in (("real_png", REAL_PNG), ("real_jpeg", REAL_JPEG)):
        if real.is_file():
            shutil.copy(real, folder / real.name)
            with Image.open(real) as im:
                width, height = im.size
            cases[name] = Case(name, real.stem, folder / real.name, (height, width))
    real_dicoms = sorted(REAL_DICOM_DIR.glob("*.dcm")) if REAL_DICOM_DIR.is_dir() else []
    if real_dicoms:
        shutil.copy(real_dicoms[0], folder / real_dicoms[0].name)
        ds = pydicom.dcmread(real_dicoms[0], stop_before_pixels=True)
        cases["real_dicom"] = Case(
            "real_dicom", real_dicoms[0].stem, folder / real_dicoms[0].name, (ds.Rows, ds.Columns)
        )
    return cases


def _wait_for_info(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"monailabel start_server exited with {proc.returncode}:\n{log.read_text()[-5000:]}")
        try:
            if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    pytest.fail(f"no /info/ answer within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-5000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn and any training child), SIGKILL what is left after 30 s."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server(student: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """``scripts/serve_label.py`` serving the student on 127.0.0.1; its process group is stopped whatever happens."""
    work = tmp_path_factory.mktemp("monailabel")
    cases = _sources(work / "sources", student.parent / "siim")
    ref_dir = work / "reference"  # the bundle's own inference command, same checkpoint, same images
    _bundle_run(
        student / "configs" / "inference.json",
        "--input_dir",
        str(work / "sources"),
        "--output_dir",
        str(ref_dir),
        cwd=work,
    )
    reference = {n: _read_png(ref_dir / f"{c.image_id}_seg.png") for n, c in cases.items()}

    studies = work / "studies"
    shutil.copytree(work / "sources", studies)

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = str(REPO)  # for the script, as `make serve` sets it: the server runs without it
    cmd = [sys.executable, str(REPO / "scripts" / "serve_label.py"), "--bundle", str(student), "--images", str(studies)]
    cmd += ["--port", str(port), "--apps-dir", str(work / "apps"), "--label-python", sys.executable]
    log = work / "server.log"  # the command's own lines, then the server's
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_info(url, proc, log)
        bundle = work / "apps" / MODEL / "app" / "model" / MODEL
        printed = log.read_text().split("[20", 1)[0]  # before the server's first timestamped line
        yield Deployment(url, bundle, printed, cases, reference, student.parent / "siim", log)
    finally:
        _stop(proc)
    assert proc.poll() is not None, "scripts/serve_label.py is still running"
    with pytest.raises(ProcessLookupError):  # nor is the server it started, nor any child of it
        os.killpg(proc.pid, 0)


def _infer(dep: Deployment, image_id: str) -> np.ndarray:
    """POST /infer/<model>?image=<id>&output=image and decode the returned PNG or DICOM mask."""
    r = requests.post(
        f"{dep.url}/infer/{MODEL}", params={"image": image_id, "output": "image"}, timeout=INFER_TIMEOUT_S
    )
    assert r.status_code == 200, f"{image_id}: HTTP {r.status_code}: {r.text[:2000]}\n{dep.log.read_text()[-3000:]}"
    return _decode(r.content, image_id)


def _decode(content: bytes, image_id: str) -> np.ndarray:
    """A returned mask: PNG, or a DICOM image for a DICOM input."""
    if content[:8] == b"\x89PNG\r\n\x1a\n":
        return _read_png(io.BytesIO(content))
    assert content[128:132] == b"DICM", f"{image_id}: neither PNG nor DICOM"
    return pydicom.dcmread(io.BytesIO(content)).pixel_array


def _case(dep: Deployment, name: str) -> Case:
    if name not in dep.cases:
        pytest.skip(
            f"real data not available: {SHARED_DATA} has no {name.replace('_', ' ')} (it ships beside the repo)"
        )
    return dep.cases[name]


CASES = [
    "synthetic_dicom",
    "synthetic_png",
    pytest.param("real_png", marks=pytest.mark.realdata),
    pytest.param("real_jpeg", marks=pytest.mark.realdata),
    pytest.param("real_dicom", marks=pytest.mark.realdata),
]


def test_info_lists_the_student_and_its_trainer(server: Deployment) -> None:
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    assert info["models"][MODEL]["dimension"] == 2
    assert info["models"][MODEL]["type"] == "segmentation"
    assert MODEL in info["trainers"]
    assert info["datastore"]["total"] == len(server.cases)


@pytest.mark.parametrize("name", CASES)
def test_infer_returns_a_binary_mask_with_the_source_pixel_count(server: Deployment, name: str) -> None:
    case = _case(server, name)
    mask = _infer(server, case.image_id)
    assert mask.ndim == 2 and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert mask.size == case.shape[0] * case.shape[1]  # the source's grid (orientation: the test below)
    if name.startswith("synthetic"):
        assert mask.any(), "the student marks pixels on the synthetic images it was trained on"


@pytest.mark.parametrize("name", CASES)
def test_infer_mask_equals_the_bundle_inference_command(server: Deployment, name: str) -> None:
    case = _case(server, name)
    mask = _infer(server, case.image_id)
    assert mask.shape == case.shape
    expected = server.reference[name]
    assert expected.shape == case.shape
    assert float((mask == expected).mean()) >= 0.999  # allows a few pixels at the 0.5 threshold


def test_the_command_prints_the_model_its_url_and_an_example_request_that_works(server: Deployment) -> None:
    assert f"as model '{MODEL}'" in server.printed and f"URL: {server.url}" in server.printed
    assert "the image id is the file name without extension" in server.printed
    deadline = time.monotonic() + 20  # the command polls /info/ too, then says so
    while f"ready: {server.url}/infer/{MODEL}" not in server.log.read_text():
        assert time.monotonic() < deadline, "no 'ready:' line"
        time.sleep(0.5)
    example = re.search(r'example: curl -X POST "(?P<url>[^"]+)" -o (?P<out>\S+)', server.printed)
    assert example, server.printed
    r = requests.post(example["url"], timeout=INFER_TIMEOUT_S)
    assert r.status_code == 200, f"HTTP {r.status_code}: {r.text[:2000]}"
    case = next(c for c in server.cases.values() if f"image={c.image_id}&" in example["url"])
    assert example["out"] == f"{case.image_id}_seg{'.dcm' if case.path.suffix == '.dcm' else '.png'}"
    assert _decode(r.content, case.image_id).shape == case.shape


def test_an_unknown_image_id_or_model_is_named_in_a_404(server: Deployment) -> None:
    r = requests.post(f"{server.url}/infer/nosuchmodel", params={"image": "x", "output": "image"}, timeout=60)
    assert r.status_code == 404 and r.json()["detail"] == f"no model 'nosuchmodel' here: this server serves {MODEL}"
    r = requests.post(f"{server.url}/infer/{MODEL}", params={"image": "no_such_image", "output": "image"}, timeout=60)
    assert r.status_code == 404, r.text
    detail = r.json()["detail"]
    assert "image id 'no_such_image' is not in the datastore" in detail
    first = min(c.image_id for c in server.cases.values())
    assert "the file name without extension, e.g. " + first in detail


def _rle_rows(siim: Path) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    with open(siim / "train-rle.csv", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for image_id, rle in reader:
            rows.setdefault(image_id, []).append(rle.strip())
    return rows


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_from_the_datastore_updates_the_model(server: Deployment, tmp_path: Path) -> None:
    rows = _rle_rows(server.siim)
    for dicom in sorted((server.siim / "dicom-images-train").rglob("*.dcm")):
        if dicom.stem != server.cases["synthetic_dicom"].image_id:
            r = requests.put(
                f"{server.url}/datastore/image",
                params={"image": dicom.stem},
                files={"file": (dicom.name, dicom.read_bytes())},
                timeout=60,
            )
            assert r.status_code == 200, r.text
        mask = tmp_path / f"{dicom.stem}.png"
        Image.fromarray(decode_union(rows[dicom.stem], 128, 128)).save(mask)
        r = requests.put(
            f"{server.url}/datastore/label",
            params={"image": dicom.stem, "tag": "final"},
            files={"label": (mask.name, mask.read_bytes())},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    assert requests.get(f"{server.url}/info/", timeout=30).json()["datastore"]["label_tags"] == {"final": len(rows)}
    model = server.bundle / "models" / "model.pt"
    before = _sha256(model)

    request = {"max_epochs": 1, "val_split": 0.2, "device": "cpu", "multi_gpu": False, "tracking": "None"}
    r = requests.post(f"{server.url}/train/{MODEL}", json=request, timeout=60)
    assert r.status_code == 200, r.text
    task_id = r.json()["id"]
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while (task := requests.get(f"{server.url}/train/", timeout=30).json())["status"] in ("SUBMITTED", "RUNNING"):
        assert task["id"] == task_id
        assert time.monotonic() < deadline, f"training still running after {TRAIN_TIMEOUT_S} s"
        time.sleep(2)
    details = task.get("details", [])
    assert task["status"] == "DONE", "\n".join([d for d in details if "Error" in d][-5:] + details[-20:])

    metrics = json.loads((server.bundle / "models" / "metrics.json").read_text())
    assert metrics["training"]["status"] == "complete" and metrics["training"]["epochs_trained"] == 1
    assert _sha256(model) != before  # the best-metric saver wrote the new weights
    mask = _infer(server, server.cases["synthetic_dicom"].image_id)  # the server serves the retrained model
    assert set(np.unique(mask).tolist()) <= {0, 1}
