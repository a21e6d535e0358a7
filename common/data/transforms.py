"""MONAI dictionary transforms for 2D X-ray images and masks: load, decode SIIM RLE, post-process.

Writing predicted masks (PNG, NIfTI, DICOM SEG) is deployment: ``common.deploy.masks``.

MONAI's LoadImaged returns PNG/JPEG arrays transposed (ITK convention) but DICOM through
pydicom in row order, and decodes no RLE; these transforms give every format one orientation
(rows, cols), the one the SIIM-ACR RLE masks assume.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.data.imaging import ImageReadError, one_line, read_image, read_mask
from common.data.rle import RLEError, decode_union

logger = logging.getLogger(__name__)

#: the item key ``LoadXrayd(on_error="skip")`` sets: "" for a read image, the reason for an unreadable one
READ_ERROR_KEY = "read_error"


class LoadXrayd(MapTransform):
    """Load image paths into float32 [0,1] MetaTensors of shape (1, rows, cols).

    Metadata (uniform across formats so batches collate): ``filename_or_obj``, ``format``,
    ``source_shape`` and ``source_affine`` (the NIfTI affine, identity otherwise).

    ``on_error="raise"`` (training, evaluation, MONAI Label) lets an unreadable image stop the run with
    ``ImageReadError`` naming the file. ``on_error="skip"`` (the inference CLI) logs it and puts a small
    all-zero placeholder in its place instead, so the batch still runs; every item then carries
    ``read_error``: "" when the image was read, else the reason, and ``SaveMaskd`` writes no mask for it.
    """

    PLACEHOLDER_SIZE = 16  # the smallest image the U-Net takes: the placeholder costs next to nothing

    def __init__(
        self, keys: KeysCollection = "image", allow_missing_keys: bool = False, on_error: str = "raise"
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.on_error == "skip":
            d.setdefault(READ_ERROR_KEY, "")
        for key in self.key_iterator(d):
            path = str(d[key])
            try:
                image, meta = read_image(path)
            except ImageReadError as e:
                if self.on_error == "raise":
                    raise
                reason = one_line(e).removeprefix(f"{path}: ")
                logger.warning("skipping %s: %s", path, reason)
                d[READ_ERROR_KEY] = reason
                image = np.zeros((self.PLACEHOLDER_SIZE, self.PLACEHOLDER_SIZE), dtype=np.float32)
                meta = {"format": "unreadable"}
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


class EmptySmallMaskd(MapTransform):
    """Clear a predicted mask whose foreground covers less than ``min_area_fraction`` of the image.

    The SIIM-ACR rule scores an empty-truth image 0 for a single false-positive pixel, so the
    usual post-processing drops tiny predictions as a whole. MONAI's RemoveSmallObjectsd works per
    connected component and needs scikit-image; this is the whole-mask rule, for (C, H, W) masks.

    With ``score_key``/``score_threshold`` the area is counted on another item instead: the pixels of the
    probabilities ``score_key`` above ``score_threshold``. That is the SIIM-ACR winners' "triplet": a mask
    (thresholded lower, e.g. by ``AsDiscreted``) is kept only when enough pixels are confidently lesion.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        min_area_fraction: float = 0.0,
        score_key: str | None = None,
        score_threshold: float = 0.5,
    ) -> None:
        super().__init__(keys)
        self.min_area_fraction, self.score_key, self.score_threshold = min_area_fraction, score_key, score_threshold

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.min_area_fraction <= 0:
            return d
        for key in self.key_iterator(d):
            mask = d[key]
            counted = mask > 0 if self.score_key is None else d[self.score_key] > self.score_threshold
            if float(counted.sum()) < self.min_area_fraction * mask.shape[-1] * mask.shape[-2]:
                d[key] = mask * 0
        return d
        for key in self.key_iterator(d):
            mask = d[key]
            area = float((mask > 0).sum())
            if area < self.min_area_fraction * mask.shape[-1] * mask.shape[-2]:
                d[key] = mask * 0
        return d
