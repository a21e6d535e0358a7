"""Writing predicted masks: PNG or NIfTI in the input's geometry, and DICOM SEG for DICOM inputs."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.data.imaging import image_format, stem
from common.deploy.dicom_seg import write_dicom_seg
from common.utils.io import atomic_path

logger = logging.getLogger(__name__)


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
