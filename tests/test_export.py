"""Zoo-ready export: zip layout, model_info.json, safe unpacking, and the unpacked bundle running on its own."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser, verify_metadata
from PIL import Image

from common.deploy.zoo import MANIFEST, BundleZipError, extract_bundle, large_file_entries, load_weights
from tests.conftest import REPO, copy_bundle, read_json, run_bundle, tiny_train_overrides

SCHEMA = REPO / "common" / "deploy" / "schemas" / "bundle_meta_schema.json"
VERSION = read_json(REPO / "bundles" / "baseline" / "configs" / "metadata.json")["version"]
KEY = f"baseline_v{VERSION}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_siim: Path) -> Path:
    """A copy of the baseline bundle trained one epoch on the tiny data (with its cache, logs, checkpoints)."""
    bundle = copy_bundle("baseline", tmp_path_factory.mktemp("export_src") / "baseline")
    run_bundle([bundle / "configs" / "train.json"], *tiny_train_overrides(tiny_siim, bundle), cwd=bundle.parent)
    return bundle


@pytest.fixture(scope="module")
def exported(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``scripts/export_bundle.py <bundle> --out <dist>`` run as a user would; returns the zip."""
    dist = tmp_path_factory.mktemp("dist")
    (dist / "model_info.json").write_text(json.dumps({"other_v1.0.0": {"version": "1.0.0", "source": "o.zip"}}))
    cmd = [sys.executable, str(REPO / "scripts" / "export_bundle.py"), str(trained), "--out", str(dist)]
    proc = subprocess.run(cmd, cwd=dist, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dist / f"{KEY}.zip"


@pytest.fixture(scope="module")
def unpacked(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zip unpacked with ``extract_bundle`` (sha1 checked against model_info.json) outside the repository."""
    dest = tmp_path_factory.mktemp("unpacked")
    assert REPO not in dest.resolve().parents
    return extract_bundle(exported, dest, model_info=exported.parent / "model_info.json")


@pytest.fixture(scope="module")
def images(tiny_siim: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny DICOMs and a PNG to run inference on."""
    folder = tmp_path_factory.mktemp("images")
    for i, path in enumerate(sorted(tiny_siim.rglob("*.dcm"))[:3]):
        shutil.copy(path, folder / f"chest{i}.dcm")
    Image.fromarray((np.arange(96 * 80) % 251).astype(np.uint8).reshape(96, 80)).save(folder / "photo.png")
    return folder


def names(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as zf:
        return zf.namelist()


# ----------------------------------------------------------------------------- the zip and model_info.json


@pytest.mark.slow
def test_zip_holds_the_bundle_and_nothing_else(exported: Path, trained: Path) -> None:
    entries = names(exported)
    assert all(n.startswith("baseline/") for n in entries)
    rel = {n.removeprefix("baseline/") for n in entries}
    assert {
        "configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/logging.conf",
        "docs/README.md", "LICENSE", "large_files.yml", MANIFEST,
        "common/__init__.py", "common/data/transforms.py", "common/deploy/dicom_seg.py", "common/ssl/__init__.py",
    } <= rel  # fmt: skip
    # metrics.json travels with model.pt: inference reads the training image size and post-processing from it
    models = {"models/model.pt", "models/model.ts", "models/metrics.json"}
    assert {r for r in rel if r.startswith("models/")} == models
    for part in ("__pycache__", ".pyc", "cache/", "logs/", "eval/", "checkpoint_epoch", ".gitkeep"):
        assert not [r for r in rel if part in r], part
    assert (trained / "cache").is_dir() and (trained / "logs").is_dir()  # they were there to leave out


@pytest.mark.slow
def test_model_info_records_the_zip_sha1_and_keeps_other_entries(exported: Path) -> None:
    info = read_json(exported.parent / "model_info.json")
    assert set(info) == {KEY, "other_v1.0.0"}
    assert info[KEY]["version"] == VERSION and info[KEY]["source"] == exported.name
    assert info[KEY]["sha1"] == hashlib.sha1(exported.read_bytes()).hexdigest()


@pytest.mark.slow
def test_unpacked_metadata_verifies_offline_and_large_files_are_listed(unpacked: Path) -> None:
    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    verify_metadata(
        meta_file=str(unpacked / "configs" / "metadata.json"), filepath=str(SCHEMA), hash_val=digest, hash_type="sha256"
    )
    assert yaml.safe_load((unpacked / "large_files.yml").read_text()) == {"large_files": []}  # all under 25 MB
    entries = {e["path"]: e for e in large_file_entries(unpacked, threshold_bytes=5 * 1024**2)}
    assert set(entries) == {"models/model.pt", "models/model.ts"}
    pt = entries["models/model.pt"]
    assert pt["url"] == "" and pt["hash_type"] == "sha256"
    assert pt["hash_val"] == hashlib.sha256((unpacked / "models" / "model.pt").read_bytes()).hexdigest()


@pytest.mark.slow
def test_torchscript_gives_the_same_output_as_the_checkpoint(unpacked: Path) -> None:
    parser = ConfigParser()
    parser.read_config(str(unpacked / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(load_weights(unpacked / "models" / "model.pt"))
    network.eval()
    scripted = torch.jit.load(str(unpacked / "models" / "model.ts"))
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), network(x))


# ----------------------------------------------------------------------------- running the unpacked bundle alone


def isolated_run(bundle: Path, images: Path, out: Path) -> str:
    """``python -I -m monai.bundle run`` of the unpacked inference.json: no PYTHONPATH, cwd outside the bundle.

    ``-I`` drops the current directory from sys.path and ignores PYTHON* variables; the run list is
    prefixed with a print of the ``common`` package the config's ``$import common`` actually bound.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run_list = "['$print(\"COMMON_FILE=\" + common.__file__)', '$@evaluator.run()']"
    cmd = [
        sys.executable, "-I", "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
        "--input_dir", str(images), "--output_dir", str(out), "--image_size", "64", "--run", run_list,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=bundle.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


@pytest.mark.slow
def test_unpacked_bundle_runs_alone_on_its_vendored_common_and_matches_the_repo_bundle(
    unpacked: Path, trained: Path, images: Path, tmp_path: Path
) -> None:
    # without the vendored copy this environment would import the repository's common (editable install)
    spec = importlib.util.find_spec("common")
    assert spec is not None and Path(spec.origin).is_relative_to(REPO)
    stdout = isolated_run(unpacked, images, tmp_path / "alone")
    used = Path(next(line for line in stdout.splitlines() if line.startswith("COMMON_FILE=")).split("=", 1)[1])
    assert used == unpacked / "common" / "__init__.py"
    run_bundle(
        [trained / "configs" / "inference.json"],
        *("--input_dir", str(images), "--output_dir", str(tmp_path / "repo"), "--image_size", "64"),
        cwd=tmp_path,
    )
    alone = sorted(p.name for p in (tmp_path / "alone").glob("*.png"))
    assert alone == sorted(p.name for p in (tmp_path / "repo").glob("*.png")) and len(alone) == 4
    assert (tmp_path / "repo" / "inference_summary.json").is_file()  # written / skipped, next to the masks
    for name in alone:
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "alone" / name)), np.asarray(Image.open(tmp_path / "repo" / name))
        )


# ----------------------------------------------------------------------------- refusing unsafe or altered zips


def make_zip(path: Path, entries: dict[str, bytes], links: tuple[str, ...] = ()) -> Path:
    """A zip with the given file entries, plus symlink entries (pointing at /etc/passwd)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    ("entries", "links"),
    [
        ({"baseline/LICENSE": b"x", "../evil": b"x"}, ()),
        ({"baseline/../../evil": b"x"}, ()),
        ({"/tmp/evil": b"x"}, ()),
        ({"baseline\\..\\evil": b"x"}, ()),
        ({"baseline/LICENSE": b"x"}, ("baseline/link",)),
        ({"baseline/LICENSE": b"x", "other/LICENSE": b"x"}, ()),
        ({"baseline/./LICENSE": b"x"}, ()),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "backslash", "symlink", "two-folders", "dot"],
)
def test_unsafe_entries_are_refused_and_nothing_is_written(
    tmp_path: Path, entries: dict[str, bytes], links: tuple[str, ...]
) -> None:
    bad = make_zip(tmp_path / "bad.zip", entries, links)
    dest = tmp_path / "dest" / "inner"
    with pytest.raises(BundleZipError, match=r"unsafe|one top-level"):
        extract_bundle(bad, dest)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "dest" / "evil").exists()
    assert not dest.exists() or list(dest.iterdir()) == []


@pytest.mark.slow
def test_wrong_sha1_is_refused(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleZipError, match="sha1"):
        extract_bundle(exported, tmp_path, expected_sha1="0" * 40)
    info = read_json(exported.parent / "model_info.json")
    info[KEY]["sha1"] = "f" * 40
    (tmp_path / "model_info.json").write_text(json.dumps(info))
    with pytest.raises(BundleZipError, match="sha1"):
        extract_bundle(exported, tmp_path / "b", model_info=tmp_path / "model_info.json")
    assert not (tmp_path / "baseline").exists() and not (tmp_path / "b" / "baseline").exists()


@pytest.mark.slow
def test_a_file_changed_after_export_is_refused_by_the_manifest(exported: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(exported) as src:
        entries = {n: src.read(n) for n in src.namelist()}
    entries["baseline/configs/inference.json"] += b"\n"
    with pytest.raises(BundleZipError, match=r"inference\.json: sha256"):
        extract_bundle(make_zip(tmp_path / "tampered.zip", entries), tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_checkpoint_that_is_not_plain_weights_is_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1), "payload": Path("anything")}, pickled)  # an arbitrary object pickled
    bad = make_zip(tmp_path / "bad.zip", {"baseline/models/model.pt": pickled.read_bytes()})
    with pytest.raises(BundleZipError, match="weights_only"):
        extract_bundle(bad, tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []
