#!/usr/bin/env python
"""Export a trained bundle as a zoo-ready zip that runs on its own.

    python scripts/export_bundle.py bundles/baseline --out dist/

writes ``dist/<name>_v<version>.zip`` (version from ``configs/metadata.json``) unpacking to ``<name>/``:
``configs/``, ``docs/``, ``LICENSE``, ``models/model.pt`` and ``models/model.ts`` (TorchScript from MONAI's
``ckpt_export``), ``large_files.yml`` (files over ``--large-file-mb``, with sha256 and an empty ``url`` to
fill in when the zoo hosts them), ``MANIFEST.sha256`` and the repository's ``common`` package vendored as
``<name>/common``. Nothing else: no cache, logs, eval outputs, other checkpoints or ``__pycache__``.
It also records the zip in ``dist/model_info.json`` (``<name>_v<version>``: version, source, sha1), as the
MONAI model zoo does. The metadata must pass ``verify_metadata`` against the schema kept in
``common/deploy/schemas`` (offline) or nothing is written.

The configs are copied unchanged. Their ``$import common`` finds ``<name>/common`` because the bundle
folder is on ``sys.path`` before the first config item is resolved: ``ConfigWorkflow.run()`` inserts it
(ahead of site-packages, and path entries win over an editable install's finder), which covers
``inference.json`` from any directory since its ``initialize`` list is empty; ``train.json`` resolves
its imports in ``initialize``, before ``run()``, so run it from the bundle folder (the current directory
is on ``sys.path``), as the zoo's instructions do. Unpack received zips with
``common.deploy.zoo.extract_bundle``, which checks the sha1, the manifest and the checkpoints.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.deploy.zoo import MANIFEST, file_digest, load_weights, manifest_text  # noqa: E402
from common.utils.io import atomic_path, atomic_write_json  # noqa: E402

SCHEMA = REPO / "common" / "deploy" / "schemas" / "bundle_meta_schema.json"
CONFIG_SUFFIXES = (".json", ".yaml", ".yml", ".conf")
LARGE_FILES = "large_files.yml"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same files give the same zip bytes


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
    """Copy configs, docs, LICENSE, ``models/model.pt`` and the vendored ``common`` package into ``stage``."""
    import torch

    model = bundle / "models" / "model.pt"
    if not model.is_file():
        raise FileNotFoundError(f"{model} is missing: train the bundle before exporting it")
    if not all(isinstance(v, torch.Tensor) for v in load_weights(model).values()):
        raise ValueError(f"{model} is not a plain state_dict")
    configs = [f for f in sorted((bundle / "configs").iterdir()) if f.suffix in CONFIG_SUFFIXES]
    docs = [f for f in sorted((bundle / "docs").rglob("*")) if f.is_file() and not f.name.startswith(".")]
    _copy_files([*configs, *docs, bundle / "LICENSE", model], bundle, stage)
    vendored = [f for f in sorted((REPO / "common").rglob("*.py")) if "__pycache__" not in f.parts]
    _copy_files(vendored, REPO, stage)


def export_torchscript(stage: Path, meta: dict[str, Any]) -> Path:
    """``models/model.ts`` from ``models/model.pt`` by MONAI's ``ckpt_export``, traced at the metadata's shape."""
    from monai.bundle import ckpt_export

    spec = meta["network_data_format"]["inputs"]["image"]
    target = stage / "models" / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(target),
        ckpt_file=str(stage / "models" / "model.pt"),
        meta_file=str(stage / "configs" / "metadata.json"),
        config_file=str(stage / "configs" / "inference.json"),
        bundle_root=str(stage),
        input_shape=[1, int(spec["num_channels"]), *map(int, spec["spatial_shape"])],
        use_trace=True,
    )
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


def export_bundle(bundle: str | Path, out: str | Path, large_file_mb: float = 25.0) -> Path:
    """Export ``bundle`` to ``out/<name>_v<version>.zip`` and record it in ``out/model_info.json``; return the zip."""
    bundle, out = Path(bundle).resolve(), Path(out).resolve()
    meta = verify(bundle / "configs" / "metadata.json")
    name, key = bundle.name, f"{bundle.name}_v{meta['version']}"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export.", dir=out) as tmp:
        stage = Path(tmp) / name
        stage_sources(bundle, stage)
        export_torchscript(stage, meta)
        write_large_files(stage, large_file_mb)
        (stage / MANIFEST).write_text(manifest_text(stage, bundle_files(stage)))
        zip_path = out / f"{key}.zip"
        write_zip(stage, name, zip_path)
    record_model_info(out, key, zip_path, meta)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and export; print the zip's path and sha1."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="bundle folder (configs/, docs/, LICENSE, models/model.pt)")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output folder (default: dist/)")
    parser.add_argument("--large-file-mb", type=float, default=25.0, help="list files above this in large_files.yml")
    args = parser.parse_args(argv)
    try:
        zip_path = export_bundle(args.bundle, args.out, args.large_file_mb)
    except (FileNotFoundError, ValueError) as e:  # a missing model, invalid metadata: say so, no traceback
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    print(f"{zip_path} sha1 {file_digest(zip_path, 'sha1')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
