"""Reading 2D images and masks: DICOM, PNG/JPEG and NIfTI (and whatever else MONAI's LoadImage reads).

Every image comes back as a float32 array (rows, cols) in [0, 1] plus a small metadata dict;
every mask as a uint8 {0,1} array (rows, cols). Arrays are always in "image convention"
(row index first), the orientation the SIIM-ACR RLE masks assume.

DICOM goes through pydicom directly rather than MONAI's PydicomReader because that reader
neither inverts MONOCHROME1 nor applies the VOI window, and X-ray normalisation needs both.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = DICOM_SUFFIXES + PIL_SUFFIXES + NIFTI_SUFFIXES


class ImageReadError(ValueError):
    """An image or mask file that cannot be read as a 2D image; the message names the file."""


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


def _to_unit_range(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


def _first(value: Any) -> float:
    """DICOM window values may be multi-valued; the first pair is the default view."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0])
    return float(value)


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 linear VOI window, mapped to [0, 1]."""
    width = max(width, 1.0)
    out = (values - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def pydicom_pixels() -> ModuleType:
    """pydicom's pixel helpers (``apply_modality_lut``, ``apply_color_lut``) for pydicom 3 and 2.4.

    ``pydicom.pixels`` in pydicom 3; ``pydicom.pixel_data_handlers.util`` in pydicom 2.4, which the
    MONAI Label environment (requirements-label.txt) pins because monailabel's pydicom-seg needs pydicom < 3.
    """
    try:
        import pydicom.pixels as helpers
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers import util as helpers
    return helpers


def dicom_frame(ds: Any, index: int) -> np.ndarray:
    """Decode one frame of a multi-frame DICOM (pydicom 3 decodes only that frame; 2.4 decodes all, then picks)."""
    helpers = pydicom_pixels()
    if hasattr(helpers, "pixel_array"):  # pydicom 3
        return helpers.pixel_array(ds, index=index)
    return ds.pixel_array[index]


def read_dicom(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a single-frame grayscale DICOM as float32 [0,1] (rows, cols).

    Applies the modality LUT (rescale slope/intercept), the VOI window when the file has one
    (else the full range), and inverts MONOCHROME1 so that air is dark in every image.
    JPEG Baseline and JPEG 2000 pixel data decode through the pylibjpeg plugins.
    """
    import pydicom

    helpers = pydicom_pixels()
    try:
        ds = pydicom.dcmread(str(path))
        if "PixelData" not in ds:
            raise ImageReadError(f"{path}: DICOM file has no pixel data (truncated, or not an image)")
        pixels = ds.pixel_array
    except ImageReadError:
        raise
    except Exception as e:  # pydicom raises many types for truncated/corrupt files
        raise ImageReadError(f"{path}: unreadable DICOM ({type(e).__name__}: {e})") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1 and photometric == "PALETTE COLOR":
        pixels = helpers.apply_color_lut(pixels, ds)
    if frames == 1 and pixels.ndim == 3 and pixels.shape[-1] == 3:  # RGB (pydicom already converted YBR)
        pixels = pixels @ np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as PIL's convert("L")
        photometric = f"{photometric}->gray"
    if frames > 1 or pixels.ndim != 2:
        raise ImageReadError(
            f"{path}: expected one grayscale frame, got pixel array {pixels.shape} ({photometric}, {frames} frames)"
        )
    values = (
        pixels.astype(np.float64)
        if "->gray" in photometric or "PALETTE" in photometric
        else (helpers.apply_modality_lut(pixels, ds).astype(np.float64))
    )
    if "WindowCenter" in ds and "WindowWidth" in ds:
        image = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
    else:
        image = _to_unit_range(values)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    meta = {
        "format": "dicom",
        "photometric": photometric,
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
    }
    return image, meta


def _read_pil_array(path: str | Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return np.asarray(im, dtype=np.float64)
            return np.asarray(im.convert("L"), dtype=np.float64)  # RGB/palette/alpha -> luminance
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
        image, meta = read_dicom(path)
    elif fmt == "pil":
        image = _to_unit_range(_read_pil_array(path))
    else:
        array, affine = _read_monai_array(path)
        image = _to_unit_range(array)
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
    array = _read_pil_array(path) if fmt == "pil" else _read_monai_array(path)[0]
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
