"""Sharing bundles as zoo-style zips: checksums, the file manifest, and safe unpacking of a received zip.

A zip written by ``scripts/export_bundle.py`` holds one folder ``<name>/`` with a ``MANIFEST.sha256``
(``sha256sum`` format, paths relative to the bundle folder), and its sha1 is recorded in the output
folder's ``model_info.json`` as in the MONAI model zoo. ``extract_bundle`` checks all of that before
anything lands in place: every entry must be a plain file or folder inside ``<name>/`` (no absolute
path, no ``..``, no symlink or device), the zip's sha1 must match when one is expected, every file's
sha256 must match the manifest when there is one, and ``models/*.pt`` must load with
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
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from common.utils.io import file_digest

MANIFEST = "MANIFEST.sha256"
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
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # an UnpicklingError for code, others for corrupt files
        raise BundleZipError(f"{path}: not loadable with weights_only=True ({type(e).__name__}: {e})") from e


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
