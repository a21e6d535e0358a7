"""Sharing bundles as zoo-style zips: packing a trained bundle (``export_bundle``), the file manifest,
and safe unpacking of a received zip (``extract_bundle``).

``export_bundle`` (``scripts/export_bundle.py``) writes ``<out>/<name>_v<version>.zip`` (version from
``configs/metadata.json``) unpacking to ``<name>/``: ``configs/``, ``docs/``, ``LICENSE``,
``models/model.pt`` and ``models/model.ts`` (TorchScript from MONAI's ``ckpt_export``), with ``onnx=True``
also ``models/model.onnx`` and its parity record ``models/model.onnx.json`` (``common.deploy.onnx_export``),
``large_files.yml`` (files over the threshold, with sha256 and an empty ``url`` to fill in when the zoo
hosts them), ``MANIFEST.sha256`` (``sha256sum`` format, paths relative to the bundle folder) and this
``common`` package vendored as ``<name>/common``. Nothing else: no cache, logs, eval outputs, other
checkpoints or ``__pycache__``. The zip's sha1 is recorded in the output folder's ``model_info.json``
as in the MONAI model zoo. The metadata must pass ``verify_metadata`` against the schema kept in
``common/deploy/schemas`` (offline) or nothing is written.

The configs are copied unchanged. Their ``$import common`` finds ``<name>/common`` because the bundle
folder is on ``sys.path`` before the first config item is resolved: ``ConfigWorkflow.run()`` inserts it
(ahead of site-packages, and path entries win over an editable install's finder), which covers
``inference.json`` from any directory since its ``initialize`` list is empty; ``train.json`` resolves
its imports in ``initialize``, before ``run()``, so run it from the bundle folder (the current directory
is on ``sys.path``), as the zoo's instructions do.

``extract_bundle`` checks a received zip before anything lands in place: every entry must be a plain
file or folder inside ``<name>/`` (no absolute path, no ``..``, no symlink or device), the zip's sha1
must match when one is expected, every file's sha256 must match the manifest when there is one, and
``models/*.pt`` must load with
``torch.load(..., weights_only=True)`` (a pickle that runs code is refused).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from common.utils.io import atomic_path, atomic_write_json, file_digest

MANIFEST = "MANIFEST.sha256"
PACKAGE = Path(__file__).resolve().parents[1]  # this ``common`` package, vendored into every export
SCHEMA = Path(__file__).resolve().parent / "schemas" / "bundle_meta_schema.json"
CONFIG_SUFFIXES = (".json", ".yaml", ".yml", ".conf")
LARGE_FILES = "large_files.yml"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same files give the same zip bytes
MAX_UNPACKED_BYTES = 4 * 1024**3  # a bundle zip that unpacks to more than this is refused (zip bomb guard)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CHUNK = 1 << 20


class BundleZipError(ValueError):
    """A bundle zip that is refused: unsafe entries, a checksum mismatch or an unsafe checkpoint."""


def manifest_text(root: str | Path, files: Iterable[str]) -> str:
    """``sha256sum``-style lines ``<sha256>  <relative path>`` for ``files`` under ``root``, sorted."""
    return "".join(f"{file_digest(Path(root) / rel)}  {rel}\n" for rel in sorted(files))


def read_manifest(path: str | Path) -> dict[str, str]:
    """Relative path -> sha256 from a ``MANIFEST.sha256`` file."""
    entries = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            digest, rel = line.split("  ", 1)
            entries[rel] = digest
    return entries


def sha1_from_model_info(model_info: str | Path, zip_name: str) -> str:
    """The sha1 recorded for ``zip_name`` (its ``source``) in a zoo-style ``model_info.json``."""
    info = json.loads(Path(model_info).read_text())
    for entry in info.values():
        if Path(str(entry.get("source", ""))).name == zip_name:
            return str(entry["sha1"])
    raise BundleZipError(f"{model_info} has no entry whose source is {zip_name}")


def _is_link_or_special(info: zipfile.ZipInfo) -> bool:
    """Whether a zip entry's Unix mode marks a symlink, device, FIFO or socket."""
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR)


def _entry_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The path components of a zip entry, refusing anything that could land outside its folder."""
    name = info.filename
    if not name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise BundleZipError(f"unsafe zip entry {name!r}: absolute or non-POSIX path")
    raw = name[:-1].split("/") if name.endswith("/") else name.split("/")
    if any(p in ("..", ".", "") for p in raw) or "\0" in name:
        raise BundleZipError(f"unsafe zip entry {name!r}: '..', '.' or empty component")
    parts = PurePosixPath(name).parts
    if _is_link_or_special(info):
        raise BundleZipError(f"unsafe zip entry {name!r}: symlink or special file")
    return parts


def check_members(members: list[zipfile.ZipInfo], max_bytes: int = MAX_UNPACKED_BYTES) -> str:
    """Validate every entry of a bundle zip; return the one top-level folder name they all live in."""
    if not members:
        raise BundleZipError("empty zip")
    tops = {_entry_parts(m)[0] for m in members}
    if len(tops) != 1:
        raise BundleZipError(f"a bundle zip holds exactly one top-level folder, found {sorted(tops)}")
    top = tops.pop()
    if not _NAME.match(top) or any(len(_entry_parts(m)) == 1 and not m.is_dir() for m in members):
        raise BundleZipError(f"top-level entry {top!r} is not a bundle folder")
    names = [m.filename.rstrip("/") for m in members]
    if len(set(names)) != len(names):
        raise BundleZipError("duplicate zip entries")
    if sum(m.file_size for m in members) > max_bytes:
        raise BundleZipError(f"the zip unpacks to more than {max_bytes} bytes")
    return top


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: list[int]) -> None:
    """Stream one entry to a new file, counting bytes against the remaining budget (headers may lie)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(target, "xb") as dst:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise BundleZipError("the zip unpacks to more bytes than it declares")
            dst.write(chunk)


def verify_manifest(bundle: str | Path) -> None:
    """Check every file of an unpacked bundle against its ``MANIFEST.sha256`` (no file missing or extra)."""
    bundle = Path(bundle)
    listed = read_manifest(bundle / MANIFEST)
    present = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {MANIFEST}
    if present != set(listed):
        raise BundleZipError(f"files differ from {MANIFEST}: {sorted(present ^ set(listed))}")
    for rel, digest in listed.items():
        if file_digest(bundle / rel) != digest:
            raise BundleZipError(f"{rel}: sha256 differs from {MANIFEST}")


def load_weights(path: str | Path) -> dict[str, Any]:
    """A checkpoint loaded with ``weights_only=True`` on the CPU (tensors and plain containers only)."""
    from common.utils.checkpoints import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(path)
    except CheckpointError as e:  # an UnpicklingError for code, others for corrupt files
        raise BundleZipError(f"{e} (loaded with weights_only=True)") from e


def _check_sha1(zip_path: Path, sha1: str | None, model_info: str | Path | None) -> None:
    expected = [s.lower() for s in (sha1, model_info and sha1_from_model_info(model_info, zip_path.name)) if s]
    if expected:
        actual = file_digest(zip_path, "sha1")
        if any(e != actual for e in expected):
            raise BundleZipError(f"{zip_path.name}: sha1 {actual} does not match the expected {expected[0]}")


def extract_bundle(
    zip_path: str | Path,
    dest: str | Path,
    expected_sha1: str | None = None,
    model_info: str | Path | None = None,
    max_bytes: int = MAX_UNPACKED_BYTES,
) -> Path:
    """Unpack a bundle zip to ``dest/<name>`` after every check in the module docstring; return that folder.

    ``expected_sha1`` and/or ``model_info`` (a ``model_info.json`` naming the zip as ``source``) give the
    zip's sha1. Nothing is left in ``dest`` when a check fails; an existing ``dest/<name>`` is refused.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    _check_sha1(zip_path, expected_sha1, model_info)
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as zf:
        members = zf.infolist()
        name = check_members(members, max_bytes)
        final = dest / name
        if final.exists() or final.is_symlink():
            raise BundleZipError(f"{final} already exists")
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest))
        try:
            budget = [max_bytes]
            for info in members:
                target = staging.joinpath(*_entry_parts(info))
                try:
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                    else:
                        _copy_member(zf, info, target, budget)
                except OSError as e:  # a file and a folder of the same name, say
                    raise BundleZipError(f"cannot unpack {info.filename!r}: {e}") from e
            _check_unpacked(staging / name)
            os.replace(staging / name, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _check_unpacked(bundle: Path) -> None:
    """Manifest (when shipped) and weights-only loading of every ``models/*.pt``."""
    if (bundle / MANIFEST).is_file():
        verify_manifest(bundle)
    for checkpoint in sorted((bundle / "models").glob("*.pt")):
        load_weights(checkpoint)


# ---- packing: a trained bundle folder -> <name>_v<version>.zip ----


def verify(meta_file: Path, schema: Path = SCHEMA) -> dict[str, Any]:
    """Validate the metadata offline against the kept schema; return it."""
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(meta_file), filepath=str(schema), hash_val=file_digest(schema), hash_type="sha256")
    meta = json.loads(meta_file.read_text())
    if meta["version"] not in meta.get("changelog", {}):
        raise ValueError(f"{meta_file}: version {meta['version']} has no changelog entry")
    return meta


def _copy_files(files: list[Path], src_root: Path, dst_root: Path) -> None:
    for f in files:
        target = dst_root / f.relative_to(src_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)


def stage_sources(bundle: Path, stage: Path) -> None:
    """Copy configs, docs, LICENSE, ``models/model.pt`` (with its ``metrics.json``: the image size and
    post-processing that inference reads, and the numbers) and the vendored ``common`` package into ``stage``."""
    import torch

    model = bundle / "models" / "model.pt"
    if not model.is_file():
        raise FileNotFoundError(f"{model} is missing: train the bundle before exporting it")
    if not all(isinstance(v, torch.Tensor) for v in load_weights(model).values()):
        raise ValueError(f"{model} is not a plain state_dict")
    configs = [f for f in sorted((bundle / "configs").iterdir()) if f.suffix in CONFIG_SUFFIXES]
    docs = [f for f in sorted((bundle / "docs").rglob("*")) if f.is_file() and not f.name.startswith(".")]
    metrics = [bundle / "models" / "metrics.json"] if (bundle / "models" / "metrics.json").is_file() else []
    _copy_files([*configs, *docs, bundle / "LICENSE", model, *metrics], bundle, stage)
    # the code and its data files (the MLflow tracking settings, the metadata schema)
    vendored = [f for f in sorted(PACKAGE.rglob("*")) if f.suffix in (".py", ".json") and "__pycache__" not in f.parts]
    _copy_files(vendored, PACKAGE.parent, stage)


def export_args(bundle: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """What MONAI's ``ckpt_export`` and ``onnx_export`` are given alike: ``network_def`` of ``inference.json``
    with the weights of ``models/model.pt``, traced at the metadata's input shape."""
    spec = meta["network_data_format"]["inputs"]["image"]
    return {
        "net_id": "network_def",
        "ckpt_file": str(bundle / "models" / "model.pt"),
        "meta_file": str(bundle / "configs" / "metadata.json"),
        "config_file": str(bundle / "configs" / "inference.json"),
        "bundle_root": str(bundle),
        "input_shape": [1, int(spec["num_channels"]), *map(int, spec["spatial_shape"])],
        "use_trace": True,
    }


def export_torchscript(stage: Path, meta: dict[str, Any]) -> Path:
    """``models/model.ts`` from ``models/model.pt`` by MONAI's ``ckpt_export``, traced at the metadata's shape."""
    from monai.bundle import ckpt_export

    target = stage / "models" / "model.ts"
    ckpt_export(filepath=str(target), **export_args(stage, meta))
    return target


def large_file_entries(root: Path, threshold_bytes: int) -> list[dict[str, str]]:
    """Zoo ``large_files`` entries (path, url placeholder, sha256) for files above the threshold."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.stat().st_size > threshold_bytes)
    return [
        {"path": p.relative_to(root).as_posix(), "url": "", "hash_val": file_digest(p), "hash_type": "sha256"}
        for p in files
    ]


def write_large_files(root: Path, threshold_mb: float) -> None:
    """``large_files.yml``: what the zoo hosts outside its repository (kept inside this zip as well)."""
    import yaml

    entries = large_file_entries(root, int(threshold_mb * 1024 * 1024))
    header = (
        f"# files over {threshold_mb:g} MB; they are in this zip too. Fill in each url when the files are\n"
        "# hosted; `python -m monai.bundle download_large_files` skips files whose hash already matches.\n"
    )
    (root / LARGE_FILES).write_text(header + yaml.safe_dump({"large_files": entries}, sort_keys=False))


def bundle_files(root: Path) -> list[str]:
    """Every file under ``root`` as sorted POSIX relative paths."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def write_zip(root: Path, name: str, target: Path) -> None:
    """Zip ``root`` as ``<name>/...`` with fixed entry times and modes, atomically."""
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in bundle_files(root):
            info = zipfile.ZipInfo(f"{name}/{rel}", date_time=ZIP_TIME)
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(root / rel, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path`` so that concurrent exports do not lose each other's entries."""
    import fcntl  # POSIX only: unpacking (above) works without it

    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def record_model_info(out: Path, key: str, zip_path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Add or replace ``key`` in ``out/model_info.json`` (zoo format); return the entry."""
    entry = {
        "version": meta["version"],
        "source": zip_path.name,
        "sha1": file_digest(zip_path, "sha1"),
        "monai_version": meta.get("monai_version"),
        "pytorch_version": meta.get("pytorch_version"),
    }
    info_file = out / "model_info.json"
    with _locked(info_file):
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        info[key] = entry
        atomic_write_json(info_file, dict(sorted(info.items())))
    return entry


def export_bundle(
    bundle: str | Path,
    out: str | Path,
    large_file_mb: float = 25.0,
    onnx: bool = False,
    onnx_images: str | Path | None = None,
) -> Path:
    """Export ``bundle`` to ``out/<name>_v<version>.zip`` and record it in ``out/model_info.json``; return the zip.

    ``onnx``: add ``models/model.onnx`` checked against PyTorch on ``onnx_images`` (default: synthetic demo
    images); an ``OnnxParityError`` (a ``ValueError``) then stops the export before anything is written."""
    bundle, out = Path(bundle).resolve(), Path(out).resolve()
    meta = verify(bundle / "configs" / "metadata.json")
    name, key = bundle.name, f"{bundle.name}_v{meta['version']}"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export.", dir=out) as tmp:
        stage = Path(tmp) / name
        stage_sources(bundle, stage)
        export_torchscript(stage, meta)
        if onnx:
            from common.deploy.onnx_export import export_onnx

            export_onnx(stage, onnx_images)
        write_large_files(stage, large_file_mb)
        (stage / MANIFEST).write_text(manifest_text(stage, bundle_files(stage)))
        zip_path = out / f"{key}.zip"
        write_zip(stage, name, zip_path)
    record_model_info(out, key, zip_path, meta)
    return zip_path
