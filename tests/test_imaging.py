"""Image readers on real DICOMs (JPEG Baseline, JPEG 2000, MONOCHROME1, 8/15-bit) and generated files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from common.data.imaging import ImageReadError, list_images, read_image, read_mask, stem
from tests.conftest import shared_path


@pytest.mark.realdata
def test_real_siim_dicom_jpeg_baseline_8bit() -> None:
    path = next(shared_path("siim_sample", "dicom-images-train").rglob("*.dcm"))
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    image, meta = read_image(path)
    assert image.shape == (1024, 1024) and image.dtype == np.float32
    assert meta["bits_stored"] == 8 and meta["photometric"] == "MONOCHROME2"
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.9


def _lungs_darker_than_mediastinum(image: np.ndarray) -> bool:
    h, w = image.shape
    rows = slice(int(0.3 * h), int(0.6 * h))
    lungs = (image[rows, int(0.2 * w) : int(0.35 * w)].mean() + image[rows, int(0.65 * w) : int(0.8 * w)].mean()) / 2
    mediastinum = image[rows, int(0.45 * w) : int(0.55 * w)].mean()
    return bool(lungs < mediastinum - 0.1)


@pytest.mark.realdata
def test_real_monochrome1_is_inverted_so_lungs_are_dark() -> None:
    path = shared_path("siim_sample", "extra_real_cxr_dicom", "RG1_UNCR_chest_CR.dcm")
    raw = pydicom.dcmread(path)
    assert raw.PhotometricInterpretation == "MONOCHROME1" and raw.BitsStored == 15
    image, _meta = read_image(path)
    assert image.shape == (1955, 1841)
    assert _lungs_darker_than_mediastinum(image)
    assert not _lungs_darker_than_mediastinum(1.0 - image)  # the stored values show lungs bright


@pytest.mark.realdata
def test_real_jpeg2000_decodes_to_the_uncompressed_pixels() -> None:
    folder = shared_path("siim_sample", "extra_real_cxr_dicom")
    j2k, meta = read_image(folder / "RG1_J2KR_chest_CR_jpeg2000lossless.dcm")
    plain, _ = read_image(folder / "RG1_UNCR_chest_CR.dcm")
    assert meta["transfer_syntax"] == "1.2.840.10008.1.2.4.90"
    np.testing.assert_array_equal(j2k, plain)  # lossless


def test_truncated_dicom_error_names_the_file(tmp_path: Path, tiny_siim: Path) -> None:
    source = next(tiny_siim.rglob("*.dcm"))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(source.read_bytes()[:2000])
    with pytest.raises(ImageReadError, match=r"broken\.dcm: (unreadable DICOM|pixel data cannot be decoded)"):
        read_image(broken)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a dicom at all")
    with pytest.raises(ImageReadError, match=r"garbage\.dcm"):
        read_image(garbage)


def test_png_rgb_16bit_and_nifti(tmp_path: Path) -> None:
    gray = (np.arange(20 * 30).reshape(20, 30) % 256).astype(np.uint8)
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(gray.astype(np.uint16) * 200).save(tmp_path / "deep.png")
    nib.save(nib.Nifti1Image(gray.astype(np.float32), np.eye(4)), tmp_path / "slice.nii.gz")
    rgb, meta = read_image(tmp_path / "rgb.png")
    assert rgb.shape == (20, 30) and meta["format"] == "pil"
    np.testing.assert_allclose(rgb, (gray - gray.min()) / (gray.max() - gray.min()), atol=1e-6)
    deep, _ = read_image(tmp_path / "deep.png")
    np.testing.assert_allclose(deep, rgb, atol=1e-6)
    nii, meta = read_image(tmp_path / "slice.nii.gz")
    assert nii.shape == (20, 30) and meta["format"] == "nifti"
    np.testing.assert_allclose(nii, rgb, atol=1e-6)


def test_masks_threshold_at_half_their_maximum(tmp_path: Path) -> None:
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:9] = 255
    mask[8, 8] = 40  # JPEG-like noise stays background
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.uint8 and out.sum() == 18 and out[8, 8] == 0


def test_3d_volume_is_refused_as_a_2d_image(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 5), np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    with pytest.raises(ImageReadError, match="expected a 2D image"):
        read_image(tmp_path / "vol.nii.gz")


def test_stem_and_list_images(tmp_path: Path) -> None:
    assert stem("a/b/case.nii.gz") == "case" and stem("x.dcm") == "x"
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "sub/a.dcm", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [Path(i["image"]).name for i in list_images(tmp_path)] == ["b.png", "a.dcm"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "missing")
