"""MONAI dictionary transforms for 2D X-ray images and masks: load, decode SIIM RLE, save masks.

MONAI's LoadImaged returns PNG/JPEG arrays transposed (ITK convention) but DICOM through
pydicom in row order, and decodes no RLE; these transforms give every format one orientation
(rows, cols), the one the SIIM-ACR RLE masks assume.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.data.imaging import ImageReadError, image_format, read_image, read_mask, stem
from common.data.rle import RLEError, decode_union
from common.utils.io import atomic_path

logger = logging.getLogger(__name__)


class LoadXrayd(MapTransform):
    """Load image paths into float32 [0,1] MetaTensors of shape (1, rows, cols).

    Metadata (uniform across formats so batches collate): ``filename_or_obj``, ``format``,
    ``source_shape`` and ``source_affine`` (the NIfTI affine, identity otherwise).
    """

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            image, meta = read_image(path)
            affine = np.asarray(meta.get("affine", np.eye(4)), dtype=np.float64)
            d[key] = MetaTensor(
                torch.from_numpy(image[None]),
                meta={
                    "filename_or_obj": path,
                    "format": meta["format"],
                    "source_shape": torch.tensor(image.shape),
                    "source_affine": torch.from_numpy(affine),
                },
            )
        return d


class LoadMaskd(MapTransform):
    """Produce ``label`` (1, rows, cols) float32 {0,1} from a mask file or from SIIM ``rle`` rows.

    The mask must have the reference image's size; a mismatch or a bad RLE is an error naming
    the file or ImageId. The ``rle`` entry is removed (variable-length lists do not collate).
    """

    def __init__(self, label_key: str = "label", rle_key: str = "rle", ref_key: str = "image") -> None:
        super().__init__([label_key], allow_missing_keys=True)
        self.label_key, self.rle_key, self.ref_key = label_key, rle_key, ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        height, width = d[self.ref_key].shape[-2:]
        if self.rle_key in d:
            rles = d.pop(self.rle_key)
            try:
                mask = decode_union(list(rles), height, width)
            except RLEError as e:
                raise RLEError(f"ImageId {d.get('id', d[self.ref_key].meta.get('filename_or_obj'))}: {e}") from e
        elif isinstance(d.get(self.label_key), (str, os.PathLike)):
            mask = read_mask(d[self.label_key])
            if mask.shape != (height, width):
                raise ImageReadError(
                    f"{d[self.label_key]}: mask size {mask.shape[0]}x{mask.shape[1]} does not match "
                    f"its image ({height}x{width})"
                )
        else:
            return d
        d[self.label_key] = MetaTensor(torch.from_numpy(mask[None].astype(np.float32)), meta=dict(d[self.ref_key].meta))
        return d


class MarkLabelledd(MapTransform):
    """Flag each item as labelled or not (``labelled``: 1.0 / 0.0) and give unlabelled ones an all-zero label.

    Distillation mixes labelled and unlabelled images in one batch; the flag tells the loss which
    images the segmentation term applies to, and the zero label only makes the batch collate.
    """

    def __init__(self, label_key: str = "label", ref_key: str = "image", flag_key: str = "labelled") -> None:
        super().__init__([label_key], allow_missing_keys=True)
        self.label_key, self.ref_key, self.flag_key = label_key, ref_key, flag_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        has_label = torch.is_tensor(d.get(self.label_key))
        if not has_label:
            if d.get(self.label_key) is not None:
                raise ValueError(f"{self.label_key} of {d.get(self.ref_key)} is not loaded: run LoadMaskd first")
            ref = d[self.ref_key]
            zeros = torch.zeros_like(torch.as_tensor(ref), dtype=torch.float32)
            d[self.label_key] = MetaTensor(zeros, meta=dict(ref.meta)) if isinstance(ref, MetaTensor) else zeros
        # a plain float: it collates to a tensor and, unlike a tensor, stays the same type through the
        # persistent cache (which turns tensors into MetaTensors), so fresh and cached items batch together
        d[self.flag_key] = 1.0 if has_label else 0.0
        return d


class SaveMaskd(MapTransform):
    """Write ``pred`` masks (rows, cols) next to nothing else: ``<output_dir>/<stem>_<postfix>.<ext>``.

    NIfTI inputs get a NIfTI mask with the input's affine, every other input a PNG of the input's
    size. Values are written as {0, ``scale``} uint8 (``scale=1`` for label maps, 255 to view).
    Each file is written under a temporary name and renamed, so no half-written mask is left.
    MONAI's SaveImaged is not used because it writes in place and transposes PNGs.

    With ``dicom_seg=True`` a DICOM input also gets ``<stem>_<postfix>.dcm``: a binary DICOM
    Segmentation (see ``common.deploy.dicom_seg``) in the source's study, referencing it, on its full pixel
    grid, naming ``algorithm_name`` / ``algorithm_version``; its path goes to ``<key>_dicom_seg_path``
    (``dicom_seg`` also accepts the strings 'true'/'false' that ``--dicom_seg true`` passes).
    Other inputs still get their PNG/NIfTI and no SEG (a folder may mix formats): the first skip is
    logged as a warning, later ones at info level, and ``seg_skipped`` counts them. A DICOM input the
    SEG cannot be derived from raises ``DicomSegError`` naming the file (its PNG is already written).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str | Path = "eval",
        ref_key: str = "image",
        postfix: str = "seg",
        scale: int = 1,
        dicom_seg: bool | str = False,
        algorithm_name: str = "monai-bundle",
        algorithm_version: str = "unknown",
    ) -> None:
        super().__init__(keys)
        self.output_dir, self.ref_key, self.postfix, self.scale = Path(output_dir), ref_key, postfix, scale
        self.dicom_seg = self._flag(dicom_seg)
        self.algorithm_name, self.algorithm_version = algorithm_name, algorithm_version
        self.seg_skipped = 0

    @staticmethod
    def _flag(value: bool | str) -> bool:
        """A boolean option; the bundle CLI passes ``--dicom_seg true`` as the string 'true'."""
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        if isinstance(value, (bool, int)):
            return bool(value)
        raise ValueError(f"dicom_seg must be true or false, got {value!r}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        source = str(ref.meta["filename_or_obj"]) if isinstance(ref, MetaTensor) else str(ref)
        for key in self.key_iterator(d):
            mask = np.asarray(d[key].detach().cpu() if torch.is_tensor(d[key]) else d[key])
            mask = (np.squeeze(mask) > 0).astype(np.uint8) * np.uint8(self.scale)
            if mask.ndim != 2:
                raise ValueError(f"{source}: expected a 2D mask to save, got shape {mask.shape}")
            d[f"{key}_path"] = str(self._write(source, mask, ref))
            if self.dicom_seg:
                seg = self._write_seg(source, mask)
                if seg is not None:
                    d[f"{key}_dicom_seg_path"] = str(seg)
        return d

    def _write_seg(self, source: str, mask: np.ndarray) -> Path | None:
        """The DICOM SEG of a DICOM input's mask; None (logged, counted) for any other input."""
        if image_format(source) != "dicom":
            self.seg_skipped += 1
            log = logger.warning if self.seg_skipped == 1 else logger.info
            log("no DICOM SEG for %s: not a DICOM input, mask written as usual (%d skipped)", source, self.seg_skipped)
            return None
        from common.deploy.dicom_seg import write_dicom_seg

        target = self.output_dir / f"{stem(source)}_{self.postfix}.dcm"
        return write_dicom_seg(source, mask, target, self.algorithm_name, self.algorithm_version)

    def _write(self, source: str, mask: np.ndarray, ref: Any) -> Path:
        name = f"{stem(source)}_{self.postfix}"
        if image_format(source) == "nifti":
            import nibabel as nib

            affine = np.asarray(ref.meta["source_affine"]) if isinstance(ref, MetaTensor) else np.eye(4)
            target = self.output_dir / f"{name}.nii.gz"
            with atomic_path(target) as tmp:
                nib.save(nib.Nifti1Image(mask, affine), str(tmp))
            return target
        from PIL import Image

        target = self.output_dir / f"{name}.png"
        with atomic_path(target) as tmp:
            Image.fromarray(mask).save(tmp, format="PNG")
        return target


class EmptySmallMaskd(MapTransform):
    """Clear a predicted mask whose foreground covers less than ``min_area_fraction`` of the image.

    The SIIM-ACR rule scores an empty-truth image 0 for a single false-positive pixel, so the
    usual post-processing drops tiny predictions as a whole. MONAI's RemoveSmallObjectsd works per
    connected component and needs scikit-image; this is the whole-mask rule, for (C, H, W) masks.
    """

    def __init__(self, keys: KeysCollection = "pred", min_area_fraction: float = 0.0) -> None:
        super().__init__(keys)
        self.min_area_fraction = min_area_fraction

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.min_area_fraction <= 0:
            return d
        for key in self.key_iterator(d):
            mask = d[key]
            area = float((mask > 0).sum())
            if area < self.min_area_fraction * mask.shape[-1] * mask.shape[-2]:
                d[key] = mask * 0
        return d
