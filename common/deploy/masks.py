"""Writing predicted masks: PNG or NIfTI in the input's geometry, and DICOM SEG for DICOM inputs.

The inference CLI also skips what it cannot read: ``skip_unreadable`` gives the loader a placeholder
for an unreadable image, ``SaveMaskd`` writes nothing for it and ``SaveMaskd.finish`` ends the run with
``inference_summary.json`` (masks written, inputs skipped and why) next to the masks.
"""

from __future__ import annotations

import copy
import logging
import os
from collections import Counter
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform

from common.data.imaging import IMAGE_SUFFIXES, image_format, stem
from common.data.transforms import READ_ERROR_KEY, LoadXrayd
from common.deploy.dicom_seg import write_dicom_seg
from common.utils.io import atomic_path, atomic_write_json
from common.utils.settings import flag

logger = logging.getLogger(__name__)

SUMMARY_FILE = "inference_summary.json"
LOGGED_SKIPS = 10  # the summary line names this many skipped inputs; the JSON names all


def skip_unreadable(preprocessing: Compose) -> Compose:
    """``preprocessing`` whose ``LoadXrayd`` steps skip unreadable images (``on_error="skip"``).

    Every other step is the same object, so ``Invertd`` over ``preprocessing`` still inverts what this
    one applied. For the inference CLI's dataset: ``preprocessing`` itself keeps raising (MONAI Label
    runs it and must report an unreadable image, not return an empty mask for it).
    """
    tolerant = copy.copy(preprocessing)
    tolerant.transforms = [
        LoadXrayd(t.keys, t.allow_missing_keys, on_error="skip") if isinstance(t, LoadXrayd) else t
        for t in preprocessing.transforms
    ]
    return tolerant


class SaveMaskd(MapTransform):
    """Write ``pred`` masks (rows, cols): ``<output_dir>/<sub folder>/<stem>_<postfix>.<ext>``.

    NIfTI inputs get a NIfTI mask with the input's affine, every other input a PNG of the input's
    size. Values are written as {0, ``scale``} uint8 (``scale=1`` for label maps, 255 to view).
    Each file is written under a temporary name and renamed, so no half-written mask is left.
    MONAI's SaveImaged is not used because it writes in place and transposes PNGs.

    Names: an input under ``input_dir`` keeps its sub folder under ``output_dir`` (flat otherwise); when
    two images in one folder share a stem (``x.png``, ``x.jpg``) the mask keeps the input's whole file
    name (``x.png_seg.png``, ``x.jpg_seg.png``). No output written in this run is overwritten: a name
    taken already gets ``_2``, ``_3``... (logged). A flat folder of unique stems gives ``<stem>_seg.png``.

    An item whose ``read_error`` is set (``LoadXrayd(on_error="skip")``) gets no mask; it is counted
    with its reason, and ``finish()`` writes ``inference_summary.json`` into ``output_dir``: how many
    masks were written, which inputs were skipped and why. It stops the run (``SystemExit``, one line)
    when no mask was written, or when ``strict`` and an input was skipped.

    With ``dicom_seg=True`` a DICOM input also gets ``<stem>_<postfix>.dcm``: a binary DICOM
    Segmentation (see ``common.deploy.dicom_seg``) in the source's study, referencing it, on its full pixel
    grid, naming ``algorithm_name`` / ``algorithm_version``; its path goes to ``<key>_dicom_seg_path``
    (``dicom_seg`` and ``strict`` also accept the strings 'true'/'false' that ``--dicom_seg true`` passes).
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
        input_dir: str | Path | None = None,
        strict: bool | str = False,
    ) -> None:
        super().__init__(keys)
        self.output_dir, self.ref_key, self.postfix, self.scale = Path(output_dir), ref_key, postfix, scale
        self.dicom_seg = flag("dicom_seg", dicom_seg)
        self.strict = flag("strict", strict)
        self.algorithm_name, self.algorithm_version = algorithm_name, algorithm_version
        self.input_dir = Path(input_dir) if input_dir else None
        self.seg_skipped = 0
        self.written: list[dict[str, str]] = []  # {image, mask[, dicom_seg]} per image with a mask
        self.skipped: list[dict[str, str]] = []  # {image, reason} per unreadable input
        self._taken: set[str] = set()  # outputs of this run (lower case: a case-insensitive file system)
        self._stems: dict[Path, Counter[str]] = {}  # image stems per input folder

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        source = str(ref.meta["filename_or_obj"]) if isinstance(ref, MetaTensor) else str(ref)
        if d.get(READ_ERROR_KEY):
            self.skipped.append({"image": source, "reason": str(d[READ_ERROR_KEY])})
            return d
        base = self._base(source)
        for key in self.key_iterator(d):
            mask = np.asarray(d[key].detach().cpu() if torch.is_tensor(d[key]) else d[key])
            mask = (np.squeeze(mask) > 0).astype(np.uint8) * np.uint8(self.scale)
            if mask.ndim != 2:
                raise ValueError(f"{source}: expected a 2D mask to save, got shape {mask.shape}")
            record = {"image": source, "mask": str(self._write(source, mask, ref, base))}
            d[f"{key}_path"] = record["mask"]
            if self.dicom_seg:
                seg = self._write_seg(source, mask, base)
                if seg is not None:
                    d[f"{key}_dicom_seg_path"] = record["dicom_seg"] = str(seg)
            self.written.append(record)
        return d

    def finish(self) -> dict[str, Any]:
        """Write ``inference_summary.json``, log the outcome; stop (one line) when nothing or, if ``strict``,
        not everything was written. Returns the summary."""
        summary = {"written": len(self.written), "skipped": self.skipped, "masks": self.written}
        path = atomic_write_json(self.output_dir / SUMMARY_FILE, summary)
        if not self.skipped:
            logger.info("%d masks written to %s (summary: %s)", len(self.written), self.output_dir, path)
            return summary
        named = "; ".join(f"{s['image']}: {s['reason']}" for s in self.skipped[:LOGGED_SKIPS])
        more = f"; and {len(self.skipped) - LOGGED_SKIPS} more" if len(self.skipped) > LOGGED_SKIPS else ""
        logger.warning(
            "%d masks written to %s, %d inputs skipped (%s%s); summary: %s",
            len(self.written),
            self.output_dir,
            len(self.skipped),
            named,
            more,
            path,
        )
        total = len(self.written) + len(self.skipped)
        if not self.written:
            raise SystemExit(f"error: no mask written: none of the {total} inputs could be read (see {path})")
        if self.strict:
            raise SystemExit(
                f"error: --strict true: {len(self.skipped)} of {total} inputs could not be read, "
                f"first {self.skipped[0]['image']} (see {path})"
            )
        return summary

    def _base(self, source: str) -> Path:
        """The output path of ``source`` without its suffix: mirrored sub folder, stem or whole file name."""
        src = Path(source)
        name = src.name if self._stem_shared(src) else stem(src)
        return self.output_dir / self._sub_folder(src) / f"{name}_{self.postfix}"

    def _sub_folder(self, src: Path) -> Path:
        """``src``'s folder relative to ``input_dir`` (nothing outside it, or without one)."""
        if self.input_dir is None or not self.input_dir.is_dir():
            return Path()
        for folder, root in ((src.parent, self.input_dir), (src.parent.resolve(), self.input_dir.resolve())):
            try:
                return folder.relative_to(root)
            except ValueError:
                continue
        return Path()

    def _stem_shared(self, src: Path) -> bool:
        """Whether another image file in ``src``'s folder has the same stem (``x.png`` and ``x.jpg``)."""
        folder = src.parent
        if folder not in self._stems:
            stems: Counter[str] = Counter()
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                            stems[stem(entry.name).lower()] += 1
            except OSError:
                pass
            self._stems[folder] = stems
        return self._stems[folder][stem(src).lower()] > 1

    def _claim(self, base: Path, suffix: str) -> Path:
        """``base + suffix``, or the first free ``base_N + suffix`` when this run wrote that name already."""
        target, n = Path(f"{base}{suffix}"), 1
        while str(target).lower() in self._taken:
            n += 1
            target = Path(f"{base}_{n}{suffix}")
        if n > 1:
            logger.warning("%s was written already in this run: this mask goes to %s", f"{base}{suffix}", target)
        self._taken.add(str(target).lower())
        return target

    def _write_seg(self, source: str, mask: np.ndarray, base: Path) -> Path | None:
        """The DICOM SEG of a DICOM input's mask; None (logged, counted) for any other input."""
        if image_format(source) != "dicom":
            self.seg_skipped += 1
            log = logger.warning if self.seg_skipped == 1 else logger.info
            log("no DICOM SEG for %s: not a DICOM input, mask written as usual (%d skipped)", source, self.seg_skipped)
            return None
        target = self._claim(base, ".dcm")
        return write_dicom_seg(source, mask, target, self.algorithm_name, self.algorithm_version)

    def _write(self, source: str, mask: np.ndarray, ref: Any, base: Path) -> Path:
        if image_format(source) == "nifti":
            import nibabel as nib

            affine = np.asarray(ref.meta["source_affine"]) if isinstance(ref, MetaTensor) else np.eye(4)
            target = self._claim(base, ".nii.gz")
            with atomic_path(target) as tmp:
                nib.save(nib.Nifti1Image(mask, affine), str(tmp))
            return target
        from PIL import Image

        target = self._claim(base, ".png")
        with atomic_path(target) as tmp:
            Image.fromarray(mask).save(tmp, format="PNG")
        return target
