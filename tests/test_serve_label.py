"""``scripts/serve_label.py`` and ``common.deploy.label_app`` without MONAI Label: the checks, the dry run and
the deployed folder, against a stand-in MONAI Label environment (a fake python and a sample app). The real
server, started through the same command, is tested in tests/label/test_serve_command.py."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.deploy.label_app import (
    MAIN_PY,
    MARKER,
    ServeError,
    deploy,
    image_id,
    plan_serving,
    resolve_bundle,
    served_images,
    stop_server,
)
from scripts.serve_label import main as serve_label


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A bundle folder with an inference config, a loadable model and outputs that are not deployed."""
    root = tmp_path / "bundles" / "mini"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "inference.json").write_text("{}")
    (root / "models").mkdir()
    torch.save({"w": torch.zeros(2)}, root / "models" / "model.pt")
    torch.save({"w": torch.zeros(2)}, root / "models" / "checkpoint_epoch=3.pt")
    (root / "logs").mkdir()
    (root / "logs" / "train.log").write_text("log")
    return root


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("chest.png", "1.2.840.5.dcm", "notes.txt"):
        (folder / name).write_bytes(b"x")
    return folder


@pytest.fixture
def label_python(tmp_path: Path) -> Path:
    """A stand-in .venv-label: bin/python and the installed monaibundle sample app (with a model/ to leave out)."""
    venv = tmp_path / "venv-label"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    app = venv / "monailabel" / "sample-apps" / "monaibundle"
    (app / "lib").mkdir(parents=True)
    (app / "model" / "old").mkdir(parents=True)
    (app / "main.py").write_text("class MyApp: pass\n")
    return venv / "bin" / "python"


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = serve_label(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _args(bundle: Path, images: Path, label_python: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--bundle",
        str(bundle),
        "--images",
        str(images),
        "--label-python",
        str(label_python),
        "--apps-dir",
        str(tmp_path / "apps"),
        *extra,
    ]


def test_dry_run_prints_url_model_example_and_the_offline_command(
    bundle: Path, images: Path, label_python: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, *_args(bundle, images, label_python, tmp_path, "--port", "8123", "--dry-run"))
    assert code == 0
    assert "as model 'mini'" in out and "URL: http://127.0.0.1:8123" in out
    assert "the image id is the file name without extension, e.g. '1.2.840.5' for 1.2.840.5.dcm" in out
    assert 'curl -X POST "http://127.0.0.1:8123/infer/mini?image=1.2.840.5&output=image" -o 1.2.840.5_seg.dcm' in out
    command = out.splitlines()[-1]
    assert f"{label_python} -m monailabel.main start_server" in command
    for part in ("--conf models mini", "--conf zoo_source local", "--conf sam2 false", "--host 127.0.0.1"):
        assert part in command
    assert "env -u PYTHONPATH" in command and "MONAI_LABEL_SESSION_PATH=" in command
    assert not (tmp_path / "apps").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_model", "models/model.pt is missing: train the bundle first"),
        ("corrupt_model", "model.pt: unreadable or corrupt checkpoint"),
        ("no_config", "is not a bundle: configs/inference.json is missing"),
        ("no_images_dir", "does not exist"),
        ("no_images", "no images in"),
        ("same_id", "get the same image id 'chest'"),
        ("no_label_venv", "not found: run `make label-venv`"),
        ("no_sample_app", "sample app is not in"),
        ("foreign_apps_dir", "exists and was not made by serve_label"),
    ],
)
def test_a_failed_check_is_one_error_line_and_exit_code_2(
    bundle: Path,
    images: Path,
    label_python: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    breakage: str,
    message: str,
) -> None:
    if breakage == "no_model":
        (bundle / "models" / "model.pt").unlink()
    elif breakage == "corrupt_model":
        (bundle / "models" / "model.pt").write_bytes(b"not a checkpoint")
    elif breakage == "no_config":
        (bundle / "configs" / "inference.json").unlink()
    elif breakage == "no_images_dir":
        images = tmp_path / "missing"
    elif breakage == "no_images":
        (images / "chest.png").unlink()
        (images / "1.2.840.5.dcm").unlink()
    elif breakage == "same_id":
        (images / "chest.PNG").write_bytes(b"x")
    elif breakage == "no_label_venv":
        label_python.unlink()
    elif breakage == "no_sample_app":
        (label_python.parents[1] / "monailabel" / "sample-apps" / "monaibundle" / "main.py").unlink()
    elif breakage == "foreign_apps_dir":
        (tmp_path / "apps" / "mini").mkdir(parents=True)
    code, out, err = _run(capsys, *_args(bundle, images, label_python, tmp_path, "--dry-run"))
    assert code == 2, out
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err


def test_a_bundle_is_a_name_in_bundles_or_a_path(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert resolve_bundle("mini", bundle.parent) == bundle.resolve()
    assert resolve_bundle(str(bundle), bundle.parent / "elsewhere") == bundle.resolve()
    with pytest.raises(ServeError, match="unknown bundle 'nosuch': neither a folder nor one of mini"):
        resolve_bundle("nosuch", bundle.parent)
    code, _, err = _run(capsys, "--bundle", "nosuch", "--images", ".")  # names are looked up in the repo's bundles/
    assert code == 2 and err.startswith("error: unknown bundle 'nosuch'") and "distill" in err


def test_a_busy_port_is_refused(bundle: Path, images: Path, label_python: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeError, match=f"port {port} on 127.0.0.1: in use"):
            plan_serving(bundle, images, tmp_path / "apps", label_python, port)


def test_image_ids_are_monailabel_s_file_names_without_extension(tmp_path: Path) -> None:
    assert image_id("scan.nii.gz") == "scan"
    assert image_id("1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm") == (
        "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819"
    )
    assert image_id("CHEST.JPEG") == "CHEST"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deeper.png").write_bytes(b"x")  # MONAI Label does not look into subfolders
    (tmp_path / "b.jpg").write_bytes(b"x")
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    assert served_images(tmp_path) == {"a": "a.nii.gz", "b": "b.jpg"}


def test_deploy_builds_the_app_with_common_vendored_and_replaces_its_own_deployment(
    bundle: Path, images: Path, label_python: Path, tmp_path: Path
) -> None:
    plan = plan_serving(bundle, images, tmp_path / "apps", label_python, 0)
    app = deploy(plan)
    assert app == tmp_path / "apps" / "mini" / "app" and (app.parent / MARKER).is_file()
    assert (app / "stock_main.py").read_text() == "class MyApp: pass\n"
    assert (app / "main.py").read_text() == MAIN_PY
    assert (app / "lib").is_dir() and not (app / "model" / "old").exists()
    deployed = app / "model" / "mini"
    assert (deployed / "models" / "model.pt").is_file() and (deployed / "configs" / "inference.json").is_file()
    assert not (deployed / "logs").exists() and not list(deployed.glob("models/checkpoint_*"))
    assert (deployed / "common" / "deploy" / "label_app.py").is_file()
    assert not list(deployed.glob("common/**/__pycache__"))
    env = plan.env({"PYTHONPATH": "/repo", "HOME": "/home/u"})
    assert "PYTHONPATH" not in env and env["HOME"] == "/home/u"
    assert "*.dcm" in json.loads(env["MONAI_LABEL_DATASTORE_FILE_EXT"])
    assert all((app.parent / d).is_dir() for d in ("sessions", "tmp"))

    (deployed / "models" / "retrained.pt").write_bytes(b"x")
    deploy(plan)  # a new serve starts from the bundle again
    assert not (deployed / "models" / "retrained.pt").exists()


def test_the_app_override_is_valid_python() -> None:
    compile(MAIN_PY, "main.py", "exec")
    assert "class ServeApp(stock_main.MyApp, MONAILabelApp)" in MAIN_PY


def test_a_server_that_ignores_ctrl_c_and_sigterm_is_killed() -> None:
    """A server that does not stop (busy, or SIGINT ignored as in a background job) is killed in the end."""
    code = "import signal as s, time; [s.signal(n, s.SIG_IGN) for n in (2, 15)]; print(1, flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline()  # its handlers are in place
    previous = signal.getsignal(signal.SIGINT)
    try:
        assert stop_server(proc, wait_s=0.2) == -signal.SIGKILL
    finally:
        signal.signal(signal.SIGINT, previous)
        proc.stdout.close()
