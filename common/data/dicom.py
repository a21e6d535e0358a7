"""The one DICOM decoder of the code base: single- and multi-frame, gray, colour and palette.

Target images (:func:`read_dicom`) and multi-domain slices (``common.data.multidomain``) both go
through :func:`open_dicom`, :func:`decode_pixels` and :func:`dicom_values`. pydicom is used directly
rather than MONAI's PydicomReader because that reader neither inverts MONOCHROME1 nor applies the
VOI window, and X-ray normalisation needs both. JPEG Baseline and JPEG 2000 pixel data decode through
the pylibjpeg plugins.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from common.data.imaging import ImageReadError, one_line, to_unit_range

logger = logging.getLogger(__name__)

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as PIL's convert("L")


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


def first_value(value: Any) -> float:
    """DICOM window values may be multi-valued; the first pair is the default view."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0])
    return float(value)


def voi_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 linear VOI window, mapped to [0, 1]."""
    width = max(width, 1.0)
    out = (values - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _mute(record: logging.LogRecord) -> bool:
    return False


@contextmanager
def _quiet_pydicom() -> Iterator[list[str]]:
    """Catch what pydicom says while reading (it both logs and warns each problem): the messages, once each.

    Like every ``warnings.catch_warnings``, not thread-safe: warnings of other threads meanwhile are caught too.
    """
    said: list[str] = []
    pydicom_logger = logging.getLogger("pydicom")
    pydicom_logger.addFilter(_mute)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield said
        said.extend(dict.fromkeys(one_line(w.message) for w in caught))
    finally:
        pydicom_logger.removeFilter(_mute)


def open_dicom(path: str | Path) -> Any:
    """The dataset of a DICOM file with pixel data; :class:`ImageReadError` naming the file otherwise.

    pydicom's own warnings while reading (invalid values, a file cut short) are not shown: a file that
    cannot be used gets the one error, one that can is read quietly (the warnings go to the debug log).
    Every top-level element is converted here, so later reads of the dataset stay quiet too.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    with _quiet_pydicom() as said:
        try:
            ds = pydicom.dcmread(str(path))
            for _ in ds:  # convert the raw elements now, inside the quiet block
                pass
        except InvalidDicomError as e:
            size = path.stat().st_size if path.is_file() else 0
            if size == 0:
                raise ImageReadError(f"{path}: empty file, not a DICOM file") from e
            short = f"; only {size} bytes, cut short?" if size < 132 else ""
            reason = "no DICM preamble" if "DICM" in str(e) else one_line(e)
            raise ImageReadError(f"{path}: not a DICOM file ({reason}{short})") from e
        except Exception as e:  # pydicom raises many types for truncated/corrupt files
            raise ImageReadError(f"{path}: unreadable DICOM ({type(e).__name__}: {one_line(e)})") from e
    if "PixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM file has no pixel data (truncated, or not an image)")
    for message in said:
        logger.debug("%s: pydicom: %s", path, message)
    return ds


def frame_count(ds: Any) -> int:
    """NumberOfFrames (1 when absent or malformed)."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def decode_pixels(ds: Any, path: str | Path, frame: int | None = None) -> np.ndarray:
    """Decoded pixels: one frame (rows, cols[, 3]) when ``frame`` is given, else all of them.

    pydicom 3 decodes only the requested frame; 2.4 decodes all, then picks.
    """
    try:
        if frame is None:
            return ds.pixel_array
        helpers = pydicom_pixels()
        if hasattr(helpers, "pixel_array"):  # pydicom 3
            return helpers.pixel_array(ds, index=frame)
        return ds.pixel_array[frame]
    except Exception as e:
        where = f"{path} frame {frame}" if frame is not None else str(path)
        raise ImageReadError(f"{where}: pixel data cannot be decoded ({type(e).__name__}: {one_line(e)})") from e


def _functional_item(ds: Any, frame: int, sequence: str) -> Any:
    """The item of a functional-group macro for one frame: per-frame first, then shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        inner = seq[index].get(sequence) if seq is not None and len(seq) > index else None
        if inner:
            return inner[0]
    return None


def dicom_values(ds: Any, pixels: np.ndarray, frame: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """One decoded frame -> (values (rows, cols) float64, normalisation facts).

    Gray pixels go through the modality LUT (per-frame functional groups of enhanced multi-frame files
    first); RGB / YBR and PALETTE COLOR become luma. The facts: ``hounsfield`` (modality LUT applied),
    ``window`` (the VOI (centre, width) or None), ``invert`` (MONOCHROME1); {} for colour. Malformed
    lookup tables are :class:`ImageReadError`.
    """
    try:
        return _apply_luts(ds, pixels, frame)
    except ImageReadError:
        raise
    except Exception as e:  # malformed palette / modality LUT / VOI values
        raise ImageReadError(f"cannot apply the DICOM lookup tables ({type(e).__name__}: {one_line(e)})") from e


def _apply_luts(ds: Any, pixels: np.ndarray, frame: int) -> tuple[np.ndarray, dict[str, Any]]:
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
        window = (first_value(voi.WindowCenter), first_value(voi.WindowWidth))
    return values, {"hounsfield": True, "window": window, "invert": photometric == "MONOCHROME1"}


def read_dicom(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a single-frame DICOM as float32 [0,1] gray (rows, cols) plus metadata.

    The modality LUT (rescale slope/intercept), the VOI window when the file has one (else the full
    range), and MONOCHROME1 inverted so that air is dark in every image; colour becomes luma.
    """
    ds = open_dicom(path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    frames = frame_count(ds)
    pixels = decode_pixels(ds, path)
    if frames > 1:
        raise ImageReadError(
            f"{path}: expected one grayscale frame, got pixel array {pixels.shape} ({photometric}, {frames} frames)"
        )
    try:
        values, facts = dicom_values(ds, pixels)
    except ImageReadError as e:
        raise ImageReadError(f"{path}: {e}") from e
    if not facts:
        photometric = f"{photometric}->gray"
    window = facts.get("window")
    image = voi_window(values, *window) if window is not None else to_unit_range(values)
    if facts.get("invert"):
        image = 1.0 - image
    meta = {
        "format": "dicom",
        "photometric": photometric,
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
    }
    return image, meta
