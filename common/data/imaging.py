"""Reading 2D images and masks: DICOM, PNG/JPEG and NIfTI (and whatever else MONAI's LoadImage reads).

Every image comes back as a float32 array (rows, cols) in [0, 1] plus a small metadata dict;
every mask as a uint8 {0,1} array (rows, cols). Arrays are always in "image convention"
(row index first), the orientation the SIIM-ACR RLE masks assume.

DICOM is decoded by ``common.data.dicom`` (the one DICOM decoder), PNG/JPEG by PIL, NIfTI and
anything else by MONAI's LoadImage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = DICOM_SUFFIXES + PIL_SUFFIXES + NIFTI_SUFFIXES


class ImageReadError(ValueError):
    """An image or mask file that cannot be read as a 2D image; the message names the file."""


def one_line(text: object) -> str:
    """An error text on one line (decoder messages can span several)."""
    return " ".join(str(text).split())


def image_format(path: str | Path) -> str:
    """Return 'dicom', 'pil' or 'nifti' for a path by its suffix ('other' for MONAI's readers)."""
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(PIL_SUFFIXES):
        return "pil"
    return "other"


def stem(path: str | Path) -> str:
    """File name without its (possibly double, like .nii.gz) image suffix."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def to_unit_range(values: np.ndarray) -> np.ndarray:
    """Min-max scaling to float32 [0, 1] (zeros for a constant image)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


PIL_VALUE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # PIL modes whose values are kept as they are


def pil_values(im: Any) -> Any:
    """The one-band PIL image whose values :func:`read_pil_values` returns for an opened image ``im``.

    16-bit / integer / float modes as they are; colour, palette and gray as luminance (``convert("L")``),
    except an image with transparency whose colour is one constant while its alpha varies (a shape drawn
    only in the alpha channel, as some annotation tools save masks): then the alpha channel.
    """
    if im.mode in PIL_VALUE_MODES:
        return im
    if "A" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        extrema = rgba.getextrema()
        alpha_lo, alpha_hi = extrema[3]
        if all(lo == hi for lo, hi in extrema[:3]) and alpha_lo != alpha_hi:
            return rgba.getchannel("A")
    return im.convert("L")


def read_pil_values(path: str | Path) -> np.ndarray:
    """PNG/JPEG/TIFF pixel values as float64 (rows, cols): see :func:`pil_values` for which values."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(pil_values(im), dtype=np.float64)
    except Exception as e:
        raise ImageReadError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e


def _read_monai_array(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """NIfTI and other formats through MONAI's LoadImage (nibabel / ITK readers)."""
    from monai.transforms import LoadImage

    try:
        data = LoadImage(image_only=True)(str(path))
    except Exception as e:
        raise ImageReadError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e
    array = np.squeeze(np.asarray(data, dtype=np.float64))
    if array.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2D image, got shape {tuple(np.asarray(data).shape)}")
    affine = np.asarray(data.affine) if hasattr(data, "affine") else None
    return array, affine


def read_image(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read any supported 2D image as float32 [0,1] (rows, cols) plus metadata (format, original shape)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    fmt = image_format(path)
    meta: dict[str, Any] = {"format": fmt}
    if fmt == "dicom":
        from common.data.dicom import read_dicom  # imported here: common.data.dicom imports this module

        image, meta = read_dicom(path)
    elif fmt == "pil":
        image = to_unit_range(read_pil_values(path))
    else:
        array, affine = _read_monai_array(path)
        image = to_unit_range(array)
        if affine is not None:
            meta["affine"] = affine.tolist()
    meta["source_shape"] = list(image.shape)
    return image, meta


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file (PNG/JPEG/NIfTI/...) as uint8 {0,1} (rows, cols).

    Foreground is above half the file's maximum, so 0/1, 0/255 and JPEG-compressed masks all work.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: mask file not found")
    fmt = image_format(path)
    if fmt == "dicom":
        raise ImageReadError(f"{path}: DICOM masks are not supported; use PNG or NIfTI")
    array = read_pil_values(path) if fmt == "pil" else _read_monai_array(path)[0]
    peak = float(array.max()) if array.size else 0.0
    return (array > peak / 2).astype(np.uint8) if peak > 0 else np.zeros(array.shape, dtype=np.uint8)


def list_images(path: str | Path) -> list[dict[str, str]]:
    """Inference input: one image file, or every supported image under a folder (sorted), as items."""
    path = Path(path)
    if path.is_file():
        return [{"image": str(path)}]
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no DICOM/PNG/JPEG/NIfTI image under {path}")
    return [{"image": str(p)} for p in files]
