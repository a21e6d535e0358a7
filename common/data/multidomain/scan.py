"""Enumerating multi-domain sources into one datalist: every file decoded once, empty slices left out
and counted, bad files listed (or skipped and listed with ``skip_bad``)."""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data.datalist import Problem
from common.data.dicom import decode_pixels, dicom_values, frame_count, open_dicom
from common.data.imaging import IMAGE_SUFFIXES, ImageReadError, image_format, one_line, read_pil_values
from common.data.multidomain.readers import (
    CT_WINDOW,
    GROUPS,
    HU_THRESHOLD,
    MultiDomainError,
    check_group,
    foreground_fraction,
    is_volume,
    nifti_plane,
    nifti_shape,
    normalise_slice,
    open_nifti,
    ras_orientation,
    slice_count,
    volume_slice,
)

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- enumerating sources


@dataclass
class SourceScan:
    """What one source folder gave: items, bad files, empty slices left out and non-image files."""

    domain: str
    group: str
    folder: Path
    items: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped_empty: int = 0
    ignored: list[str] = field(default_factory=list)


def _frames_of(
    path: str, group: str, axis: int, stride: int, min_foreground: float, ct_window: tuple[float, float]
) -> tuple[list[dict[str, int]], int]:
    """The per-item extras of one file ([{}] for a 2D image) and how many empty slices were left out."""
    fmt = image_format(path)
    entries: list[dict[str, int]] = []
    empty = 0
    if fmt == "dicom":
        ds = open_dicom(path)
        n = frame_count(ds)
        pixels = decode_pixels(ds, path, None)
        if n == 1:
            values, args = dicom_values(ds, pixels, 0)
            normalise_slice(values, group, ct_window=ct_window, **args)
            return [{}], 0
        if pixels.shape[0] != n:
            raise ImageReadError(f"{path}: {n} frames declared, pixel array {pixels.shape}")
        for k in range(0, n, stride):
            values, args = dicom_values(ds, pixels[k], k)
            if foreground_fraction(normalise_slice(values, group, ct_window=ct_window, **args)) < min_foreground:
                empty += 1
            else:
                entries.append({"frame": k})
        return entries, empty
    if fmt == "nifti":
        img = open_nifti(path)
        shape = nifti_shape(img, path)
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as e:
            raise ImageReadError(f"{path}: unreadable NIfTI data ({type(e).__name__}: {one_line(e)})") from e
        hounsfield = bool(group == "ct" and data.size and float(np.nanmin(data)) < HU_THRESHOLD)
        if not is_volume(shape):
            normalise_slice(nifti_plane(data, path), group, hounsfield=hounsfield, ct_window=ct_window)
            return [{}], 0
        ornt = ras_orientation(img)
        n = slice_count(img, axis)
        for k in range(0, n, stride):
            image = normalise_slice(
                volume_slice(data, ornt, axis, k), group, hounsfield=hounsfield, ct_window=ct_window
            )
            if foreground_fraction(image) < min_foreground:
                empty += 1
            else:
                entries.append({"frame": k, "axis": axis})
        return entries, empty
    normalise_slice(read_pil_values(path), group, ct_window=ct_window)
    return [{}], 0


def _scan_file(job: tuple) -> tuple[list[dict[str, int]], int, str | None]:
    """Process-pool wrapper of :func:`_frames_of`: a read error comes back as its reason."""
    path = job[0]
    try:
        entries, empty = _frames_of(*job)
    except ImageReadError as e:
        reason = str(e)
        reason = reason[len(path) + 2 :] if reason.startswith(f"{path}: ") else reason
        return [], 0, one_line(reason)
    return entries, empty, None


def _list_files(folder: Path, exclude: Sequence[str] = ()) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under ``folder`` (recursive, sorted), or the file itself; files whose
    name matches an ``exclude`` glob (e.g. ``*mask*``) count as other files."""
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())

    def wanted(p: Path) -> bool:
        return p.name.lower().endswith(IMAGE_SUFFIXES) and not any(fnmatch.fnmatch(p.name, g) for g in exclude)

    return [p for p in files if wanted(p)], [p for p in files if not wanted(p)]


def _check_settings(axis: int, stride: int, min_foreground: float, ct_window: Sequence[float]) -> None:
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (RAS: sagittal, coronal, axial), got {axis}")
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    if not 0.0 <= min_foreground < 1.0:
        raise ValueError(f"min_foreground must be in [0, 1), got {min_foreground}")
    if len(ct_window) != 2 or not ct_window[0] < ct_window[1]:
        raise ValueError(f"ct_window must be (low, high) HU with low < high, got {ct_window}")


def scan_sources(
    sources: Sequence[tuple[str, str | Path, str]],
    axis: int = 2,
    stride: int = 1,
    min_foreground: float = 0.05,
    ct_window: tuple[float, float] = CT_WINDOW,
    workers: int = 1,
    exclude: Sequence[str] = (),
) -> list[SourceScan]:
    """Enumerate several (domain, folder, group) sources, decoding every file once (in ``workers`` processes).

    Bad files are collected in each scan's ``problems``; nothing is raised for them here.
    """
    _check_settings(axis, stride, min_foreground, ct_window)
    scans, jobs, owners = [], [], []
    for domain_index, (domain, folder, group) in enumerate(sources):
        check_group(group, f"source {domain!r}: ")
        folder = Path(folder).expanduser().resolve()
        if not folder.exists():
            raise FileNotFoundError(f"source {domain!r}: {folder} does not exist")
        scan = SourceScan(domain=domain, group=group, folder=folder)
        images, others = _list_files(folder, exclude)
        scan.ignored = [str(p) for p in others]
        for path in images:
            jobs.append((str(path), group, axis, stride, min_foreground, tuple(ct_window)))
            owners.append((domain_index, len(scans)))
        scans.append(scan)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            outcome = list(pool.map(_scan_file, jobs))
    else:
        outcome = [_scan_file(job) for job in jobs]
    for job, (domain_index, s), (entries, empty, reason) in zip(jobs, owners, outcome, strict=True):
        scan = scans[s]
        if reason is not None:
            scan.problems.append(Problem(job[0], reason))
            continue
        scan.skipped_empty += empty
        base = {
            "image": job[0],
            "domain": scan.domain,
            "group": scan.group,
            "domain_index": domain_index,
            "group_index": GROUPS.index(scan.group),
        }
        scan.items += [{**base, **extra} for extra in entries]
    return scans


def _empty_source_problem(scan: SourceScan) -> Problem:
    bits = [f"{len(scan.problems)} unreadable"] if scan.problems else []
    bits += [f"{scan.skipped_empty} empty slices left out"] if scan.skipped_empty else []
    bits += [f"{len(scan.ignored)} non-image files ignored"] if scan.ignored else []
    detail = f" ({', '.join(bits)})" if bits else ""
    return Problem(f"source {scan.domain!r} ({scan.folder})", f"no usable image{detail}")


def enumerate_source(
    folder: str | Path,
    domain: str,
    group: str,
    axis: int = 2,
    stride: int = 1,
    min_foreground: float = 0.05,
    skip_bad: bool = False,
    *,
    domain_index: int = 0,
    ct_window: tuple[float, float] = CT_WINDOW,
    workers: int = 1,
) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Items of every image file under ``folder`` (recursive, sorted) and the bad files skipped.

    2D files give one item; multi-frame DICOM and 3D NIfTI give one per frame/slice taken every
    ``stride``, leaving out slices whose foreground (pixels above 0.1) is below ``min_foreground``.
    Non-image files are ignored. An unreadable file raises :class:`MultiDomainError` naming it
    (with ``skip_bad`` it is returned as a :class:`Problem` instead); a source without any usable
    image always raises. :func:`scan_sources` also reports the ignored files and empty slices.
    """
    (scan,) = scan_sources([(domain, folder, group)], axis, stride, min_foreground, ct_window, workers)
    if scan.problems and not skip_bad:
        raise MultiDomainError(scan.problems, " (use skip_bad to leave bad files out)")
    if not scan.items:
        raise MultiDomainError([_empty_source_problem(scan)])
    items = [{**it, "domain_index": domain_index} for it in scan.items]
    return items, scan.problems


def build_multidomain_datalist(
    sources: Sequence[tuple[str, str | Path, str]],
    axis: int = 2,
    stride: int = 1,
    min_foreground: float = 0.05,
    skip_bad: bool = False,
    ct_window: tuple[float, float] = CT_WINDOW,
    workers: int = 1,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """Aggregate (domain, folder, group) sources into one datalist dict (see the module docstring).

    Keys: ``domains`` (in the order given), ``groups`` (:data:`GROUPS`), ``sources`` ({domain:
    {folder, group}}), ``items``, ``counts`` ({"domain": {name: n}, "group": {every group: n}}),
    ``skipped`` ([{file, reason}]), ``skipped_empty_slices`` ({domain: n}), ``ignored_files``,
    ``settings`` (axis, stride, min_foreground, ct_window). Unknown groups and duplicate domain
    names are errors; so are bad files (unless ``skip_bad``) and sources without a usable image.
    Files whose name matches an ``exclude`` glob are left out and listed with the ignored files.
    """
    if not sources:
        raise ValueError("no sources given: pass at least one (domain, folder, group)")
    for domain, _, group in sources:
        if not str(domain).strip():
            raise ValueError("a source has an empty domain name")
        check_group(group, f"source {domain!r}: ")
    duplicates = sorted(name for name, n in Counter(d for d, _, _ in sources).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate domain name(s): {', '.join(duplicates)}; every source needs its own name")
    scans = scan_sources(sources, axis, stride, min_foreground, ct_window, workers, exclude)
    problems = [p for scan in scans for p in scan.problems]
    if problems and not skip_bad:
        raise MultiDomainError(problems, " (use --skip-bad to leave bad files out)")
    empty = [_empty_source_problem(scan) for scan in scans if not scan.items]
    if empty:
        raise MultiDomainError(empty)
    items = [it for scan in scans for it in scan.items]
    for p in problems:
        logger.warning("skipped %s", p)
    return {
        "domains": [scan.domain for scan in scans],
        "groups": list(GROUPS),
        "sources": {scan.domain: {"folder": str(scan.folder), "group": scan.group} for scan in scans},
        "items": items,
        "counts": {
            "domain": {scan.domain: len(scan.items) for scan in scans},
            "group": {g: sum(len(s.items) for s in scans if s.group == g) for g in GROUPS},
        },
        "skipped": [{"file": p.where, "reason": p.problem} for p in problems],
        "skipped_empty_slices": {scan.domain: scan.skipped_empty for scan in scans},
        "ignored_files": [f for scan in scans for f in scan.ignored],
        "settings": {
            "axis": axis,
            "stride": stride,
            "min_foreground": min_foreground,
            "ct_window": [float(ct_window[0]), float(ct_window[1])],
            "exclude": list(exclude),
        },
    }
