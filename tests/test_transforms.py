"""Transforms (load, RLE masks, min-area rule, save) and the resolution/source-keyed cache."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import Compose, Resized
from PIL import Image

from common.data.cache import source_aware_hash
from common.data.datalist import load_or_build_datalist
from common.data.imaging import ImageReadError, read_image
from common.data.rle import decode_union
from common.data.transforms import EmptySmallMaskd, LoadMaskd, LoadXrayd
from common.deploy.masks import SaveMaskd


def test_rle_label_matches_decoder(tiny_siim: Path) -> None:
    items = load_or_build_datalist(str(tiny_siim))["training_labelled"]
    item = next(it for it in items if it["rle"])
    out = LoadMaskd()(LoadXrayd()(dict(item)))
    assert "rle" not in out and out["image"].shape == (1, 128, 128)
    expected = decode_union(item["rle"], 128, 128)
    np.testing.assert_array_equal(out["label"][0].numpy(), expected)
    assert out["image"].meta["filename_or_obj"] == item["image"]


def test_mask_size_mismatch_names_the_mask(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.zeros((21, 30), np.uint8)).save(tmp_path / "msk.png")
    with pytest.raises(ImageReadError, match=r"msk\.png: mask size 21x30 does not match its image \(20x30\)"):
        LoadMaskd()(LoadXrayd()({"image": str(tmp_path / "img.png"), "label": str(tmp_path / "msk.png")}))


def test_empty_small_mask_rule() -> None:
    pred = torch.zeros(1, 100, 100)
    pred[0, :3, :3] = 1  # 9 pixels = 0.09% of the image
    assert EmptySmallMaskd(min_area_fraction=0.002)({"pred": pred})["pred"].sum() == 0
    pred[0, :20, :20] = 1
    assert EmptySmallMaskd(min_area_fraction=0.002)({"pred": pred})["pred"].sum() == 400


def test_save_mask_writes_png_and_nifti_in_input_geometry(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "a.png")
    affine = np.diag([0.5, 0.7, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((20, 30), np.float32), affine), tmp_path / "b.nii.gz")
    mask = np.zeros((20, 30), np.uint8)
    mask[2:6, 10:25] = 1
    saver = SaveMaskd(output_dir=tmp_path / "out")
    for name in ("a.png", "b.nii.gz"):
        d = LoadXrayd()({"image": str(tmp_path / name)})
        out = saver({**d, "pred": torch.from_numpy(mask)})
        written = Path(out["pred_path"])
        assert written.parent == tmp_path / "out"
        if written.suffix == ".png":
            np.testing.assert_array_equal(np.asarray(Image.open(written)), mask)
        else:
            nii = nib.load(written)
            np.testing.assert_array_equal(np.asarray(nii.dataobj), mask)
            np.testing.assert_allclose(nii.affine, affine)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_seg.png",
        "b_seg.nii.gz",
    ]  # no temp files


def _cached(items: list[dict], cache: Path, size: int) -> PersistentDataset:
    transform = Compose(
        [
            LoadXrayd(),
            LoadMaskd(),
            Resized(["image", "label"], (size, size), mode=["area", "nearest"], allow_missing_keys=True),
        ]
    )
    return PersistentDataset(
        items, transform, cache_dir=cache, hash_func=source_aware_hash, hash_transform=pickle_hashing, track_meta=True
    )


def test_cache_is_keyed_by_resolution_and_source(tmp_path: Path, tiny_siim: Path) -> None:
    items = load_or_build_datalist(str(tiny_siim))["validation"][:2]
    cache = tmp_path / "cache"

    def load_all(size: int) -> list[dict]:
        ds = _cached(items, cache, size)
        return [ds[i] for i in range(len(ds))]

    assert load_all(32)[0]["image"].shape == (1, 32, 32) and len(list(cache.iterdir())) == 2
    stamps = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    again = load_all(32)
    assert again[1]["image"].shape == (1, 32, 32)
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps  # read back, not recomputed
    assert again[0]["image"].meta["filename_or_obj"] == items[0]["image"]  # with its metadata
    assert load_all(48)[0]["image"].shape == (1, 48, 48)
    assert len(list(cache.iterdir())) == 4  # a new resolution gets new entries
    st = os.stat(items[0]["image"])
    os.utime(items[0]["image"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the source file changed
    load_all(48)
    assert len(list(cache.iterdir())) == 5


def test_cached_tensor_equals_direct_decode(tmp_path: Path, tiny_siim: Path) -> None:
    item = load_or_build_datalist(str(tiny_siim))["validation"][0]
    cached = _cached([item], tmp_path / "c", 128)[0]
    image, _ = read_image(item["image"])
    np.testing.assert_allclose(cached["image"][0].numpy(), image, atol=1e-6)
