"""Reading one multi-domain item (DICOM frame, NIfTI slice, 2D image) as gray [0, 1], normalised per group.

A datalist item (written by :mod:`common.data.multidomain.scan`) is a plain JSON-able dict::

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

import functools
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.data.datalist import Problem
from common.data.dicom import decode_pixels, dicom_values, frame_count, open_dicom, voi_window
from common.data.imaging import ImageReadError, image_format, one_line, read_pil_values, to_unit_range

GROUPS = ("xray", "ct", "mr", "us", "other")
CT_WINDOW = (-1000.0, 400.0)  # HU: lung (-900..-500) through soft tissue and contrast, bone saturates
HU_THRESHOLD = -500.0  # a NIfTI whose values reach below this is taken to be in Hounsfield units
PERCENTILES = (1.0, 99.0)  # robust range for mr / us / other
FOREGROUND_LEVEL = 0.1  # a pixel above this (after normalisation) counts as foreground


class MultiDomainError(ValueError):
    """Bad multi-domain input: the one-line message names each file or source (all in ``problems``)."""

    def __init__(self, problems: Sequence[Problem], hint: str = "") -> None:
        self.problems = list(problems)
        shown = "; ".join(str(p) for p in self.problems[:3])
        more = f"; ... and {len(self.problems) - 3} more" if len(self.problems) > 3 else ""
        prefix = f"{len(self.problems)} bad input files: " if len(self.problems) > 1 else ""
        super().__init__(f"{prefix}{shown}{more}{hint}")


def check_group(group: str, where: str = "") -> int:
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
    check_group(group)
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        finite = values[np.isfinite(values)]
        values = np.where(np.isfinite(values), values, finite.min() if finite.size else 0.0)
    if group == "ct" and hounsfield:
        lo, hi = ct_window
        out = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    elif group == "ct":
        out = to_unit_range(values)
    elif group == "xray":
        out = voi_window(values, *window) if window is not None else to_unit_range(values)
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


# ----------------------------------------------------------------------------- NIfTI


def open_nifti(path: str | Path) -> Any:
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as e:
        raise ImageReadError(f"{path}: unreadable NIfTI ({type(e).__name__}: {one_line(e)})") from e


def nifti_shape(img: Any, path: str | Path) -> tuple[int, ...]:
    """The volume's shape without trailing singleton dimensions beyond the third."""
    shape = list(img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    if len(shape) > 3:
        raise ImageReadError(f"{path}: {len(shape)}D NIfTI {tuple(img.shape)} is not supported (2D or 3D only)")
    return tuple(shape)


def is_volume(shape: tuple[int, ...]) -> bool:
    return sum(n > 1 for n in shape) == 3


def ras_orientation(img: Any) -> np.ndarray:
    """(voxel axis -> [RAS axis, +1/-1]) of the first three voxel axes; identity when the affine is degenerate."""
    import nibabel as nib

    try:
        ornt = nib.orientations.io_orientation(img.affine[:4, :4])[:3]
        if np.isfinite(ornt).all() and sorted(ornt[:, 0].astype(int)) == [0, 1, 2]:
            return ornt
    except Exception:  # a singular or odd affine: fall back to voxel order
        pass
    return np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


def volume_slice(data: Any, ornt: np.ndarray, axis: int, index: int) -> np.ndarray:
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


def nifti_plane(data: Any, path: str | Path) -> np.ndarray:
    plane = np.squeeze(np.asarray(data, dtype=np.float64))
    if plane.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2D image or 3D volume, got shape {tuple(data.shape)}")
    return plane


def slice_count(img: Any, axis: int) -> int:
    return int(img.shape[int(np.flatnonzero(ras_orientation(img)[:, 0] == axis)[0])])


@functools.lru_cache(maxsize=256)
def _nifti_min(path: str, size: int, mtime_ns: int) -> float:
    img = open_nifti(path)
    try:
        return float(np.nanmin(np.asanyarray(img.dataobj)))
    except Exception as e:
        raise ImageReadError(f"{path}: unreadable NIfTI data ({type(e).__name__}: {one_line(e)})") from e


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
    check_group(group, f"{path}: ")
    frame = item.get("frame")
    frame = None if frame is None else int(frame)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    fmt = image_format(path)
    where = f"{path} frame {frame}" if frame is not None else str(path)
    if fmt == "dicom":
        ds = open_dicom(path)
        n = frame_count(ds)
        if frame is None and n > 1:
            raise ImageReadError(f"{path}: multi-frame DICOM ({n} frames) needs a 'frame' in its item")
        if frame is not None and not 0 <= frame < n:
            raise ImageReadError(f"{where}: frame out of range (the file has {n} frames)")
        pixels = decode_pixels(ds, path, frame if n > 1 else None)
        try:
            values, args = dicom_values(ds, pixels, frame or 0)
        except ImageReadError as e:
            raise ImageReadError(f"{where}: {e}") from e
        return normalise_slice(values, group, ct_window=ct_window, **args)
    if fmt == "nifti":
        img = open_nifti(path)
        shape = nifti_shape(img, path)
        try:
            if is_volume(shape):
                axis = int(item.get("axis", 2))
                if axis not in (0, 1, 2):
                    raise ImageReadError(f"{where}: axis must be 0, 1 or 2, got {axis}")
                n = slice_count(img, axis)
                if frame is None or not 0 <= frame < n:
                    raise ImageReadError(f"{where}: a 3D NIfTI item needs a 'frame' in [0, {n}) along axis {axis}")
                values = volume_slice(img.dataobj, ras_orientation(img), axis, frame)
            else:
                values = nifti_plane(img.dataobj, path)
        except ImageReadError:
            raise
        except Exception as e:
            raise ImageReadError(f"{where}: unreadable NIfTI data ({type(e).__name__}: {one_line(e)})") from e
        hounsfield = group == "ct" and _nifti_is_hu(path)
        return normalise_slice(values, group, hounsfield=hounsfield, ct_window=ct_window)
    if fmt == "pil":
        return normalise_slice(read_pil_values(path), group, ct_window=ct_window)
    raise ImageReadError(f"{path}: unsupported image format (use DICOM, NIfTI, PNG or JPEG)")


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
