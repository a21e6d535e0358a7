"""Multi-domain unlabelled data for hierarchical self-supervised pre-training (HSSL).

Several folders ("domains"), each of one modality group (:data:`GROUPS`), are aggregated into one
datalist of 2D items. A datalist item is a plain JSON-able dict::

    {"image": "/abs/path", "domain": "brain", "group": "mr", "domain_index": 1, "group_index": 2,
     "frame": 4,      # only for a frame of a multi-frame DICOM or a slice of a 3D NIfTI volume
     "axis": 2}       # only for NIfTI volumes: the RAS axis sliced (0 sagittal, 1 coronal, 2 axial)

Every item reads (:func:`read_slice`) as a float32 (rows, cols) array in [0, 1]:

* DICOM: single- and multi-frame, any transfer syntax pydicom decodes (JPEG and JPEG 2000 through
  the pylibjpeg plugins). Gray pixels go through the modality LUT (per-frame functional groups of
  enhanced multi-frame files included); RGB / YBR and PALETTE COLOR become ITU-R 601 luma;
  MONOCHROME1 is inverted after normalisation so that air is dark everywhere.
* NIfTI: 2D images read in voxel order (rows = first voxel axis), exactly as
  :func:`common.data.imaging.read_image` reads them. 3D volumes are sliced along a *RAS* axis (the
  volume's closest canonical orientation, whatever its storage order), and each slice is shown
  in the radiological display convention: rows run anterior->posterior (axial) or
  superior->inferior (coronal, sagittal), columns run patient right->left (axial, coronal) or
  anterior->posterior (sagittal). With canonical slice ``s`` indexed (lower RAS axis, higher RAS
  axis), the image is ``s.T[::-1, ::-1]``.
* PNG / JPEG / TIFF ...: RGB, palette and alpha images become luminance (PIL's ``convert("L")``).

Intensities are normalised per group after slicing (see :func:`normalise_slice`).
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.data.datalist import Problem
from common.data.imaging import (
    IMAGE_SUFFIXES,
    ImageReadError,
    _first,
    _read_pil_array,
    _to_unit_range,
    _window,
    dicom_frame,
    image_format,
    pydicom_pixels,
)

logger = logging.getLogger(__name__)

GROUPS = ("xray", "ct", "mr", "us", "other")
CT_WINDOW = (-1000.0, 400.0)  # HU: lung (-900..-500) through soft tissue and contrast, bone saturates
HU_THRESHOLD = -500.0  # a NIfTI whose values reach below this is taken to be in Hounsfield units
PERCENTILES = (1.0, 99.0)  # robust range for mr / us / other
FOREGROUND_LEVEL = 0.1  # a pixel above this (after normalisation) counts as foreground
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's convert("L")


class MultiDomainError(ValueError):
    """Bad multi-domain input: the one-line message names each file or source (all in ``problems``)."""

    def __init__(self, problems: Sequence[Problem], hint: str = "") -> None:
        self.problems = list(problems)
        shown = "; ".join(str(p) for p in self.problems[:3])
        more = f"; ... and {len(self.problems) - 3} more" if len(self.problems) > 3 else ""
        prefix = f"{len(self.problems)} bad input files: " if len(self.problems) > 1 else ""
        super().__init__(f"{prefix}{shown}{more}{hint}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _check_group(group: str, where: str = "") -> int:
    if group not in GROUPS:
        raise ValueError(f"{where}unknown group {group!r}; valid groups: {', '.join(GROUPS)}")
    return GROUPS.index(group)


# ----------------------------------------------------------------------------- normalisation


def normalise_slice(
    values: np.ndarray,
    group: str,
    *,
    hounsfield: bool = False,
    window: tuple[float, float] | None = None,
    invert: bool = False,
    ct_window: tuple[float, float] = CT_WINDOW,
) -> np.ndarray:
    """Map one 2D slice/frame to float32 [0, 1] by its modality group.

    * ``ct``: with ``hounsfield`` (DICOM gray pixels after the modality LUT; NIfTI reaching below
      -500) the fixed window ``ct_window`` (HU, default [-1000, 400]) -> [0, 1], clipped; otherwise
      (CT already windowed into a PNG/JPEG, colour DICOM) the full range.
    * ``xray``: the DICOM VOI ``window`` (centre, width) when given, else the full range.
    * ``mr``, ``us``, ``other``: the 1st..99th percentile -> [0, 1], clipped (the full range
      from the 1st percentile when the 99th does not exceed it, e.g. a mostly empty slice).

    ``invert`` (MONOCHROME1) flips the result. Non-finite values count as the finite minimum.
    """
    _check_group(group)
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        finite = values[np.isfinite(values)]
        values = np.where(np.isfinite(values), values, finite.min() if finite.size else 0.0)
    if group == "ct" and hounsfield:
        lo, hi = ct_window
        out = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    elif group == "ct":
        out = _to_unit_range(values)
    elif group == "xray":
        out = _window(values, *window) if window is not None else _to_unit_range(values)
    else:
        lo, hi = np.percentile(values, PERCENTILES)
        if hi <= lo:
            hi = float(values.max())
        out = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros(values.shape)
    out = out.astype(np.float32)
    return (1.0 - out).astype(np.float32) if invert else out


def foreground_fraction(image: np.ndarray) -> float:
    """Share of pixels above :data:`FOREGROUND_LEVEL` in a normalised slice."""
    return float((np.asarray(image) > FOREGROUND_LEVEL).mean()) if np.asarray(image).size else 0.0


# ----------------------------------------------------------------------------- DICOM


def _dicom_dataset(path: str | Path) -> Any:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:  # pydicom raises many types for truncated/corrupt files
        raise ImageReadError(f"{path}: unreadable DICOM ({type(e).__name__}: {_one_line(e)})") from e
    if "PixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM file has no pixel data (truncated, or not an image)")
    return ds


def _frame_count(ds: Any) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _decode_dicom(ds: Any, path: str | Path, frame: int | None) -> np.ndarray:
    """Decoded pixels: one frame (rows, cols[, 3]) when ``frame`` is given, else all of them."""
    try:
        return dicom_frame(ds, frame) if frame is not None else ds.pixel_array
    except Exception as e:
        where = f"{path} frame {frame}" if frame is not None else str(path)
        raise ImageReadError(f"{where}: pixel data cannot be decoded ({type(e).__name__}: {_one_line(e)})") from e


def _functional_item(ds: Any, frame: int, sequence: str) -> Any:
    """The item of a functional-group macro for one frame: per-frame first, then shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        inner = seq[index].get(sequence) if seq is not None and len(seq) > index else None
        if inner:
            return inner[0]
    return None


def _dicom_values(ds: Any, pixels: np.ndarray, frame: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One decoded frame -> (values (rows, cols) float64, normalisation arguments); bad LUTs are read errors."""
    try:
        return _apply_dicom_luts(ds, pixels, frame)
    except ImageReadError:
        raise
    except Exception as e:  # malformed palette / modality LUT / VOI values
        raise ImageReadError(f"cannot apply the DICOM lookup tables ({type(e).__name__}: {_one_line(e)})") from e


def _apply_dicom_luts(ds: Any, pixels: np.ndarray, frame: int) -> tuple[np.ndarray, dict[str, Any]]:
    helpers = pydicom_pixels()
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "PALETTE COLOR":
        pixels = helpers.apply_color_lut(pixels, ds)
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # RGB (pydicom already converted YBR) -> luma
        return pixels.astype(np.float64) @ LUMA, {}
    if pixels.ndim != 2:
        raise ImageReadError(f"unexpected pixel array {pixels.shape} for one frame ({photometric})")
    rescale = _functional_item(ds, frame, "PixelValueTransformationSequence")
    if rescale is not None and "RescaleSlope" in rescale and "RescaleIntercept" in rescale:
        values = pixels.astype(np.float64) * float(rescale.RescaleSlope) + float(rescale.RescaleIntercept)
    else:
        values = np.asarray(helpers.apply_modality_lut(pixels, ds), dtype=np.float64)
    voi = _functional_item(ds, frame, "FrameVOILUTSequence") or ds
    window = None
    if "WindowCenter" in voi and "WindowWidth" in voi:
        window = (_first(voi.WindowCenter), _first(voi.WindowWidth))
    return values, {"hounsfield": True, "window": window, "invert": photometric == "MONOCHROME1"}


# ----------------------------------------------------------------------------- NIfTI


def _nifti_image(path: str | Path) -> Any:
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as e:
        raise ImageReadError(f"{path}: unreadable NIfTI ({type(e).__name__}: {_one_line(e)})") from e


def _nifti_shape(img: Any, path: str | Path) -> tuple[int, ...]:
    """The volume's shape without trailing singleton dimensions beyond the third."""
    shape = list(img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    if len(shape) > 3:
        raise ImageReadError(f"{path}: {len(shape)}D NIfTI {tuple(img.shape)} is not supported (2D or 3D only)")
    return tuple(shape)


def _is_volume(shape: tuple[int, ...]) -> bool:
    return sum(n > 1 for n in shape) == 3


def _orientation(img: Any) -> np.ndarray:
    """(voxel axis -> [RAS axis, +1/-1]) of the first three voxel axes; identity when the affine is degenerate."""
    import nibabel as nib

    try:
        ornt = nib.orientations.io_orientation(img.affine[:4, :4])[:3]
        if np.isfinite(ornt).all() and sorted(ornt[:, 0].astype(int)) == [0, 1, 2]:
            return ornt
    except Exception:  # a singular or odd affine: fall back to voxel order
        pass
    return np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


def _volume_slice(data: Any, ornt: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` along RAS ``axis`` of ``data`` (an array or a nibabel dataobj), display-oriented."""
    voxel_axis = int(np.flatnonzero(ornt[:, 0] == axis)[0])
    n = data.shape[voxel_axis]
    where = [slice(None)] * 3 + [0] * (len(data.shape) - 3)
    where[voxel_axis] = index if ornt[voxel_axis, 1] > 0 else n - 1 - index
    plane = np.asarray(data[tuple(where)], dtype=np.float64)
    rest = [a for a in range(3) if a != voxel_axis]
    for k, a in enumerate(rest):
        if ornt[a, 1] < 0:
            plane = np.flip(plane, axis=k)
    if ornt[rest[0], 0] > ornt[rest[1], 0]:
        plane = plane.T
    return np.ascontiguousarray(plane.T[::-1, ::-1])  # rows: higher RAS axis reversed; cols: lower one reversed


def _nifti_plane(data: Any, path: str | Path) -> np.ndarray:
    plane = np.squeeze(np.asarray(data, dtype=np.float64))
    if plane.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2D image or 3D volume, got shape {tuple(data.shape)}")
    return plane


def _slice_count(img: Any, axis: int) -> int:
    return int(img.shape[int(np.flatnonzero(_orientation(img)[:, 0] == axis)[0])])


@functools.lru_cache(maxsize=256)
def _nifti_min(path: str, size: int, mtime_ns: int) -> float:
    img = _nifti_image(path)
    try:
        return float(np.nanmin(np.asanyarray(img.dataobj)))
    except Exception as e:
        raise ImageReadError(f"{path}: unreadable NIfTI data ({type(e).__name__}: {_one_line(e)})") from e


def _nifti_is_hu(path: str | Path) -> bool:
    st = os.stat(path)
    return _nifti_min(str(path), st.st_size, st.st_mtime_ns) < HU_THRESHOLD


# ----------------------------------------------------------------------------- reading items


def read_slice(item: Mapping[str, Any], ct_window: tuple[float, float] = CT_WINDOW) -> np.ndarray:
    """Read one datalist item as float32 (rows, cols) gray in [0, 1], normalised by its group.

    ``item`` needs ``image`` and ``group``; ``frame`` picks a frame of a multi-frame DICOM or a
    slice of a 3D NIfTI (along RAS ``axis``, default 2). Errors are :class:`ImageReadError` naming the file.
    """
    path = Path(str(item["image"]))
    group = item.get("group")
    if group is None:
        raise ValueError(f"{path}: datalist item has no 'group' (one of {', '.join(GROUPS)})")
    _check_group(group, f"{path}: ")
    frame = item.get("frame")
    frame = None if frame is None else int(frame)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    fmt = image_format(path)
    where = f"{path} frame {frame}" if frame is not None else str(path)
    if fmt == "dicom":
        ds = _dicom_dataset(path)
        n = _frame_count(ds)
        if frame is None and n > 1:
            raise ImageReadError(f"{path}: multi-frame DICOM ({n} frames) needs a 'frame' in its item")
        if frame is not None and not 0 <= frame < n:
            raise ImageReadError(f"{where}: frame out of range (the file has {n} frames)")
        pixels = _decode_dicom(ds, path, frame if n > 1 else None)
        try:
            values, args = _dicom_values(ds, pixels, frame or 0)
        except ImageReadError as e:
            raise ImageReadError(f"{where}: {e}") from e
        return normalise_slice(values, group, ct_window=ct_window, **args)
    if fmt == "nifti":
        img = _nifti_image(path)
        shape = _nifti_shape(img, path)
        try:
            if _is_volume(shape):
                axis = int(item.get("axis", 2))
                if axis not in (0, 1, 2):
                    raise ImageReadError(f"{where}: axis must be 0, 1 or 2, got {axis}")
                n = _slice_count(img, axis)
                if frame is None or not 0 <= frame < n:
                    raise ImageReadError(f"{where}: a 3D NIfTI item needs a 'frame' in [0, {n}) along axis {axis}")
                values = _volume_slice(img.dataobj, _orientation(img), axis, frame)
            else:
                values = _nifti_plane(img.dataobj, path)
        except ImageReadError:
            raise
        except Exception as e:
            raise ImageReadError(f"{where}: unreadable NIfTI data ({type(e).__name__}: {_one_line(e)})") from e
        hounsfield = group == "ct" and _nifti_is_hu(path)
        return normalise_slice(values, group, hounsfield=hounsfield, ct_window=ct_window)
    if fmt == "pil":
        return normalise_slice(_read_pil_array(path), group, ct_window=ct_window)
    raise ImageReadError(f"{path}: unsupported image format (use DICOM, NIfTI, PNG or JPEG)")


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
        ds = _dicom_dataset(path)
        n = _frame_count(ds)
        pixels = _decode_dicom(ds, path, None)
        if n == 1:
            values, args = _dicom_values(ds, pixels, 0)
            normalise_slice(values, group, ct_window=ct_window, **args)
            return [{}], 0
        if pixels.shape[0] != n:
            raise ImageReadError(f"{path}: {n} frames declared, pixel array {pixels.shape}")
        for k in range(0, n, stride):
            values, args = _dicom_values(ds, pixels[k], k)
            if foreground_fraction(normalise_slice(values, group, ct_window=ct_window, **args)) < min_foreground:
                empty += 1
            else:
                entries.append({"frame": k})
        return entries, empty
    if fmt == "nifti":
        img = _nifti_image(path)
        shape = _nifti_shape(img, path)
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as e:
            raise ImageReadError(f"{path}: unreadable NIfTI data ({type(e).__name__}: {_one_line(e)})") from e
        hounsfield = bool(group == "ct" and data.size and float(np.nanmin(data)) < HU_THRESHOLD)
        if not _is_volume(shape):
            normalise_slice(_nifti_plane(data, path), group, hounsfield=hounsfield, ct_window=ct_window)
            return [{}], 0
        ornt = _orientation(img)
        n = _slice_count(img, axis)
        for k in range(0, n, stride):
            image = normalise_slice(
                _volume_slice(data, ornt, axis, k), group, hounsfield=hounsfield, ct_window=ct_window
            )
            if foreground_fraction(image) < min_foreground:
                empty += 1
            else:
                entries.append({"frame": k, "axis": axis})
        return entries, empty
    normalise_slice(_read_pil_array(path), group, ct_window=ct_window)
    return [{}], 0


def _scan_file(job: tuple) -> tuple[list[dict[str, int]], int, str | None]:
    """Process-pool wrapper of :func:`_frames_of`: a read error comes back as its reason."""
    path = job[0]
    try:
        entries, empty = _frames_of(*job)
    except ImageReadError as e:
        reason = str(e)
        reason = reason[len(path) + 2 :] if reason.startswith(f"{path}: ") else reason
        return [], 0, _one_line(reason)
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
        _check_group(group, f"source {domain!r}: ")
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
        _check_group(group, f"source {domain!r}: ")
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


# ----------------------------------------------------------------------------- sampling


def domain_balanced_weights(items: Sequence[Mapping[str, Any]]) -> list[float]:
    """Per-item weight 1 / (items of its domain): every domain is drawn equally often."""
    counts = Counter(it["domain"] for it in items)
    return [1.0 / counts[it["domain"]] for it in items]


def balanced_sampler(
    items: Sequence[Mapping[str, Any]], num_samples: int | None = None, seed: int = 0
) -> torch.utils.data.WeightedRandomSampler:
    """A seeded ``WeightedRandomSampler`` (with replacement) over ``items`` with domain-balanced weights."""
    if not items:
        raise ValueError("cannot sample from an empty item list")
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(
        domain_balanced_weights(items), num_samples or len(items), replacement=True, generator=generator
    )


# ----------------------------------------------------------------------------- MONAI transform


class LoadSliced(MapTransform):
    """Load datalist items into float32 [0,1] MetaTensors of shape (1, rows, cols) via :func:`read_slice`.

    Deterministic (it can precede ``Resized`` in a cached PersistentDataset). ``domain_index`` and
    ``group_index`` stay plain ints, ``frame`` and ``axis`` become ints (-1 when the item has none),
    so 2D items and slices collate in one batch. Metadata as :class:`common.data.transforms.LoadXrayd`
    (``filename_or_obj``, ``format``, ``source_shape``, ``source_affine``) plus ``frame``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        ct_window: tuple[float, float] = CT_WINDOW,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ct_window = (float(ct_window[0]), float(ct_window[1]))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        frame = -1 if d.get("frame") is None else int(d["frame"])
        for key in self.key_iterator(d):
            path = str(d[key])
            image = read_slice({**d, "image": path}, ct_window=self.ct_window)
            d[key] = MetaTensor(
                torch.from_numpy(image[None]),
                meta={
                    "filename_or_obj": path,
                    "format": image_format(path),
                    "frame": frame,
                    "source_shape": torch.tensor(image.shape),
                    "source_affine": torch.eye(4, dtype=torch.float64),
                },
            )
        for key in ("domain_index", "group_index"):
            if key in d:
                d[key] = int(d[key])
        d["frame"] = frame
        d["axis"] = -1 if d.get("axis") is None else int(d["axis"])
        return d
