"""Multi-domain data layer (common/data/multidomain.py): readers, normalisation, datalist, sampling, CLI, demo set."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.uid import (
    JPEG2000Lossless,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
)

from common.data.demo import _synthetic_dicom, make_demo_multidomain
from common.data.dicom import read_dicom
from common.data.imaging import read_image
from common.data.multidomain import (
    CT_WINDOW,
    GROUPS,
    LoadSliced,
    MultiDomainError,
    balanced_sampler,
    build_multidomain_datalist,
    domain_balanced_weights,
    enumerate_source,
    normalise_slice,
    read_slice,
    scan_sources,
)
from tests.conftest import REPO, shared_path

SCRIPT = REPO / "scripts" / "prepare_multidomain.py"
LUMA = np.array([0.299, 0.587, 0.114])


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", modality: str = "OT", **tags) -> Path:
    """A small uncompressed DICOM; (frames, rows, cols) pixels make a multi-frame file."""
    sop = MultiFrameGrayscaleWordSecondaryCaptureImageStorage if pixels.ndim == 3 and photometric != "RGB" else None
    uid = f"1.2.826.0.1.3680043.10.1441.77.{zlib.crc32(path.name.encode())}"
    _synthetic_dicom(path, pixels, sop or SecondaryCaptureImageStorage, uid, modality, photometric, **tags)
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4) if affine is None else affine), str(path))
    return path


def ramp(rows: int = 24, cols: int = 32, scale: float = 1.0) -> np.ndarray:
    return (np.arange(rows * cols).reshape(rows, cols) * scale).astype(np.float64)


# ----------------------------------------------------------------------------- normalisation


def test_ct_hu_window_maps_minus_1000_to_0_and_400_to_1_clipped() -> None:
    values = np.array([[-2000.0, -1000.0, -300.0, 400.0, 3000.0]])
    out = normalise_slice(values, "ct", hounsfield=True)
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-6)
    assert out.dtype == np.float32
    assert CT_WINDOW == (-1000.0, 400.0)
    # already windowed CT (PNG/JPEG): full range
    np.testing.assert_allclose(normalise_slice(np.array([[10.0, 60.0, 110.0]]), "ct"), [[0.0, 0.5, 1.0]])


def test_mr_percentiles_and_xray_full_range_or_window() -> None:
    values = ramp(10, 10)  # 0..99
    values[0, 0], values[0, 1] = -1e6, 1e6  # outliers beyond the 1st / 99th percentile
    lo, hi = np.percentile(values, (1, 99))
    out = normalise_slice(values, "mr")
    np.testing.assert_allclose(out, np.clip((values - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert out[0, 0] == 0.0 and out[0, 1] == 1.0 and 0 < out[5, 5] < 1
    for group in ("us", "other"):
        np.testing.assert_array_equal(normalise_slice(values, group), out)
    # x-ray: full range without a window, the DICOM VOI window with one
    np.testing.assert_allclose(normalise_slice(ramp(1, 5, 25.0), "xray"), [[0, 0.25, 0.5, 0.75, 1.0]])
    windowed = normalise_slice(np.array([[0.0, 50.0, 100.0, 200.0]]), "xray", window=(100.5, 101.0))
    np.testing.assert_allclose(windowed, [[0.0, 0.0, 0.5, 1.0]], atol=1e-6)
    np.testing.assert_allclose(normalise_slice(ramp(1, 5, 25.0), "xray", invert=True), [[1, 0.75, 0.5, 0.25, 0]])
    with pytest.raises(ValueError, match="valid groups: xray, ct, mr, us, other"):
        normalise_slice(values, "pet")


# ----------------------------------------------------------------------------- DICOM


def test_multiframe_dicom_frames_read_back_and_empty_frames_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(100, 4000, size=(5, 20, 24)).astype(np.uint16)
    frames[3] = 0  # an empty frame
    path = write_dicom(tmp_path / "mr" / "multi.dcm", frames, modality="MR")
    items, problems = enumerate_source(tmp_path / "mr", "brain", "mr", domain_index=3)
    assert problems == [] and [it["frame"] for it in items] == [0, 1, 2, 4]
    assert all(it["domain_index"] == 3 and it["group_index"] == GROUPS.index("mr") for it in items)
    (scan,) = scan_sources([("brain", tmp_path / "mr", "mr")])
    assert scan.skipped_empty == 1
    for k in (0, 2, 4):
        got = read_slice({"image": str(path), "group": "mr", "frame": k})
        lo, hi = np.percentile(frames[k].astype(np.float64), (1, 99))
        np.testing.assert_allclose(got, np.clip((frames[k] - lo) / (hi - lo), 0, 1), atol=1e-6)
    # stride takes every 2nd frame (0, 2, 4), the empty frame 3 is not even looked at
    strided, _ = enumerate_source(tmp_path / "mr", "brain", "mr", stride=2)
    assert [it["frame"] for it in strided] == [0, 2, 4]
    with pytest.raises(ValueError, match="frame out of range"):
        read_slice({"image": str(path), "group": "mr", "frame": 5})
    with pytest.raises(ValueError, match="needs a 'frame'"):
        read_slice({"image": str(path), "group": "mr"})


def test_enhanced_multiframe_ct_uses_functional_group_rescale(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.stack([np.full((16, 16), 24, np.uint16), np.full((16, 16), 1324, np.uint16)])  # -1000 and 300 HU
    transform = Dataset()
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = -1024, 1, "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transform])
    path = write_dicom(tmp_path / "ect.dcm", stored, modality="CT", SharedFunctionalGroupsSequence=Sequence([shared]))
    for k, hu in enumerate((-1000, 300)):
        got = read_slice({"image": str(path), "group": "ct", "frame": k})
        np.testing.assert_allclose(got, (hu + 1000) / 1400, atol=1e-6)


def test_monochrome1_is_inverted_and_matches_read_dicom(tmp_path: Path) -> None:
    pixels = ramp(16, 16, 10.0).astype(np.uint16)
    path = write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1", "CR")
    got = read_slice({"image": str(path), "group": "xray"})
    np.testing.assert_allclose(got, 1.0 - pixels / pixels.max(), atol=1e-6)
    assert got[0, 0] == 1.0 and got[-1, -1] == 0.0  # the lowest stored value is the brightest
    np.testing.assert_allclose(got, read_dicom(path)[0], atol=1e-6)
    windowed = write_dicom(tmp_path / "m1w.dcm", pixels, "MONOCHROME1", "CR", WindowCenter=1000, WindowWidth=1000)
    np.testing.assert_allclose(read_slice({"image": str(windowed), "group": "xray"}), read_dicom(windowed)[0])
    m2 = write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2", "CR")
    np.testing.assert_allclose(read_slice({"image": str(m2), "group": "xray"}), pixels / pixels.max(), atol=1e-6)


def test_rgb_and_palette_color_dicom_become_luma(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(20, 24, 3)).astype(np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, "RGB", "US")
    np.testing.assert_allclose(
        read_slice({"image": str(path), "group": "other"}), normalise_slice(rgb @ LUMA, "other"), atol=1e-6
    )
    np.testing.assert_allclose(read_slice({"image": str(path), "group": "ct"}), normalise_slice(rgb @ LUMA, "ct"))

    index = (np.arange(20 * 24).reshape(20, 24) % 256).astype(np.uint8)
    red, green = np.arange(256, dtype=np.uint16) * 257, (255 - np.arange(256, dtype=np.uint16)) * 257
    blue = np.full(256, 1000, dtype=np.uint16)
    palette = write_dicom(
        tmp_path / "palette.dcm",
        index,
        "PALETTE COLOR",
        "US",
        RedPaletteColorLookupTableDescriptor=[256, 0, 16],
        GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
        BluePaletteColorLookupTableDescriptor=[256, 0, 16],
        RedPaletteColorLookupTableData=red.tobytes(),
        GreenPaletteColorLookupTableData=green.tobytes(),
        BluePaletteColorLookupTableData=blue.tobytes(),
    )
    expected = np.stack([red[index], green[index], blue[index]], axis=-1).astype(np.float64) @ LUMA
    np.testing.assert_allclose(
        read_slice({"image": str(palette), "group": "us"}), normalise_slice(expected, "us"), atol=1e-6
    )


def test_jpeg2000_dicom_decodes_like_the_uncompressed_one(tmp_path: Path) -> None:
    pixels = ramp(32, 32, 3.0).astype(np.uint16)
    plain = write_dicom(tmp_path / "plain.dcm", pixels, modality="CT", RescaleSlope=1, RescaleIntercept=-1024)
    ds = pydicom.dcmread(plain)
    ds.compress(JPEG2000Lossless)
    ds.save_as(tmp_path / "j2k.dcm")
    assert pydicom.dcmread(tmp_path / "j2k.dcm").file_meta.TransferSyntaxUID == JPEG2000Lossless
    for group in ("ct", "mr"):
        np.testing.assert_array_equal(
            read_slice({"image": str(tmp_path / "j2k.dcm"), "group": group}),
            read_slice({"image": str(plain), "group": group}),
        )


@pytest.mark.realdata
def test_real_compressed_dicoms() -> None:
    ct = shared_path("multidomain", "ct", "explicit_VR-UN.dcm")  # JPEG 2000 lossless CT, HU after the LUT
    assert pydicom.dcmread(ct, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG2000Lossless
    image = read_slice({"image": str(ct), "group": "ct"})
    assert image.shape == (512, 512) and image.min() == 0.0 and 0.2 < image.mean() < 0.8
    nm = shared_path("multidomain", "nm", "NM_wholebody_bone_JPEG2000_UNC.dcm")  # despite its name: uncompressed
    whole_body = read_slice({"image": str(nm), "group": "other"})
    assert whole_body.shape == (1024, 256) and whole_body.min() >= 0.0 and whole_body.max() == 1.0
    siim = shared_path("siim_sample", "dicom-images-train")  # JPEG Baseline chest CR: as the X-ray pipeline reads it
    (cxr,) = siim.glob("*.dcm")
    np.testing.assert_array_equal(read_slice({"image": str(cxr), "group": "xray"}), read_dicom(cxr)[0])


# ----------------------------------------------------------------------------- NIfTI


def hu_volume(shape: tuple[int, int, int] = (20, 24, 30)) -> np.ndarray:
    """(x, y, z) HU: an off-centre body block with a marker, air on the first/last 4 z slices."""
    rng = np.random.default_rng(2)
    vol = np.full(shape, -1000.0, dtype=np.float32)
    vol[3:15, 2:20, 4:-4] = rng.uniform(-100, 300, size=(12, 18, shape[2] - 8))
    vol[14, 19, 4:-4] = 1500.0  # patient right (high x), anterior (high y)
    return vol


def test_nifti_volume_slices_stride_empty_and_orientation(tmp_path: Path) -> None:
    vol = hu_volume()
    path = write_nifti(tmp_path / "ct" / "vol.nii.gz", vol)
    items, _ = enumerate_source(tmp_path / "ct", "chest", "ct", axis=2, stride=3)
    # z = 0, 3, ..., 27: 10 slices, of which 0, 3 and 27 (the first and last 4 are air) are empty
    assert [it["frame"] for it in items] == [6, 9, 12, 15, 18, 21, 24]
    assert all(it["axis"] == 2 for it in items)
    (scan,) = scan_sources([("chest", tmp_path / "ct", "ct")], axis=2, stride=3)
    assert scan.skipped_empty == 3
    for k in (6, 21):
        got = read_slice({"image": str(path), "group": "ct", "frame": k, "axis": 2})
        # display convention: rows = y reversed (anterior at the top), cols = x reversed (patient right on the left)
        expected = normalise_slice(vol[:, :, k].T[::-1, ::-1], "ct", hounsfield=True)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        # the body's most right-anterior voxel (x=14, y=19) is its top-left pixel: row 23-19, column 19-14
        assert got.shape == (24, 20) and got[4, 5] == 1.0 and got[:4].max() == 0.0 and got[:, :5].max() == 0.0
    # the other axes: sagittal (x) and coronal (y) slices, every slice of the body block kept
    assert len(enumerate_source(tmp_path / "ct", "chest", "ct", axis=0)[0]) == 12
    assert len(enumerate_source(tmp_path / "ct", "chest", "ct", axis=1)[0]) == 18
    coronal = read_slice({"image": str(path), "group": "ct", "frame": 19, "axis": 1})
    np.testing.assert_allclose(coronal, normalise_slice(vol[:, 19, :].T[::-1, ::-1], "ct", hounsfield=True))


def test_nifti_storage_order_does_not_change_the_slices(tmp_path: Path) -> None:
    vol = hu_volume()
    write_nifti(tmp_path / "ras" / "v.nii", vol)
    # the same volume stored LPS and z-first: voxel (z, x', y') with x' = X-1-x, y' = Y-1-y
    lps = np.transpose(vol[::-1, ::-1, :], (2, 0, 1))
    affine = np.zeros((4, 4))
    affine[0, 1], affine[1, 2], affine[2, 0], affine[3, 3] = -1.0, -1.0, 1.0, 1.0
    write_nifti(tmp_path / "lps" / "v.nii", lps, affine)
    for axis in (0, 1, 2):
        ras_items, _ = enumerate_source(tmp_path / "ras", "a", "ct", axis=axis, stride=2)
        lps_items, _ = enumerate_source(tmp_path / "lps", "b", "ct", axis=axis, stride=2)
        assert [it["frame"] for it in ras_items] == [it["frame"] for it in lps_items]
        for a, b in zip(ras_items[::3], lps_items[::3], strict=True):
            np.testing.assert_array_equal(read_slice(a), read_slice(b))


def test_nifti_2d_reads_like_read_image_and_hu_detection(tmp_path: Path) -> None:
    plane = ramp(12, 16, 5.0).astype(np.float32)
    path = write_nifti(tmp_path / "x" / "plane.nii.gz", plane[:, :, None])
    items, _ = enumerate_source(tmp_path / "x", "cxr_nifti", "xray")
    assert items == [{"image": str(path), "domain": "cxr_nifti", "group": "xray", "domain_index": 0, "group_index": 0}]
    np.testing.assert_allclose(read_slice(items[0]), read_image(path)[0], atol=1e-6)
    # CT NIfTI without values below -500 is not taken as HU: full range
    mr_like = write_nifti(tmp_path / "c" / "not_hu.nii", plane)
    np.testing.assert_allclose(read_slice({"image": str(mr_like), "group": "ct"}), plane / plane.max(), atol=1e-6)


# ----------------------------------------------------------------------------- datalists


def three_domains(root: Path) -> list[tuple[str, Path, str]]:
    rng = np.random.default_rng(4)
    for name, n in (("a", 3), ("b", 2), ("c", 1)):
        for i in range(n):
            write_png(root / name / f"img{i}.png", rng.integers(0, 256, size=(16, 16)).astype(np.uint8))
    (root / "a" / "notes.txt").write_text("not an image")
    return [("cxr", root / "a", "xray"), ("brain", root / "b", "mr"), ("eye", root / "c", "other")]


def test_datalist_names_indices_counts(tmp_path: Path) -> None:
    datalist = build_multidomain_datalist(three_domains(tmp_path))
    assert datalist["domains"] == ["cxr", "brain", "eye"] and datalist["groups"] == list(GROUPS)
    assert datalist["counts"] == {
        "domain": {"cxr": 3, "brain": 2, "eye": 1},
        "group": {"xray": 3, "ct": 0, "mr": 2, "us": 0, "other": 1},
    }
    labels = {(it["domain"], it["group"], it["domain_index"], it["group_index"]) for it in datalist["items"]}
    assert labels == {("cxr", "xray", 0, 0), ("brain", "mr", 1, 2), ("eye", "other", 2, 4)}
    assert all(Path(it["image"]).is_absolute() and "frame" not in it for it in datalist["items"])
    assert datalist["ignored_files"] == [str((tmp_path / "a" / "notes.txt").resolve())]
    assert datalist["skipped"] == [] and datalist["skipped_empty_slices"] == {"cxr": 0, "brain": 0, "eye": 0}
    assert datalist["settings"] == {
        "axis": 2,
        "stride": 1,
        "min_foreground": 0.05,
        "ct_window": [-1000.0, 400.0],
        "exclude": [],
    }
    json.dumps(datalist)  # plain JSON
    assert build_multidomain_datalist(three_domains(tmp_path), workers=2) == datalist


def test_unknown_group_and_duplicate_domain_are_errors(tmp_path: Path) -> None:
    sources = three_domains(tmp_path)
    with pytest.raises(ValueError, match=r"unknown group 'pet'; valid groups: xray, ct, mr, us, other"):
        build_multidomain_datalist([*sources[:2], ("petscan", tmp_path / "c", "pet")])
    with pytest.raises(ValueError, match=r"duplicate domain name.*cxr"):
        build_multidomain_datalist([*sources, ("cxr", tmp_path / "c", "xray")])


# ----------------------------------------------------------------------------- sampling


def test_balanced_sampler_draws_domains_equally() -> None:
    items = [{"domain": "big"}] * 100 + [{"domain": "small"}] * 5
    weights = domain_balanced_weights(items)
    assert weights[0] == pytest.approx(0.01) and weights[-1] == pytest.approx(0.2)
    draws = list(balanced_sampler(items, num_samples=2000, seed=7))
    share = Counter(items[i]["domain"] for i in draws)
    assert 800 <= share["big"] <= 1200 and 800 <= share["small"] <= 1200
    assert draws == list(balanced_sampler(items, num_samples=2000, seed=7))  # seeded
    assert draws != list(balanced_sampler(items, num_samples=2000, seed=8))
    assert len(list(balanced_sampler(items))) == len(items)


# ----------------------------------------------------------------------------- bad input


def test_truncated_file_error_names_it_and_skip_bad_lists_it(tmp_path: Path) -> None:
    sources = three_domains(tmp_path)
    good = write_dicom(tmp_path / "d" / "good.dcm", ramp(16, 16).astype(np.uint16))
    bad = tmp_path / "d" / "truncated.dcm"
    bad.write_bytes(good.read_bytes()[:400])
    (tmp_path / "d" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(MultiDomainError, match=r"truncated\.dcm") as info:
        build_multidomain_datalist([*sources, ("dicoms", tmp_path / "d", "xray")])
    assert len(info.value.problems) == 2 and "\n" not in str(info.value)
    assert "broken.png" in str(info.value)
    datalist = build_multidomain_datalist([*sources, ("dicoms", tmp_path / "d", "xray")], skip_bad=True)
    assert datalist["counts"]["domain"]["dicoms"] == 1
    assert sorted(Path(s["file"]).name for s in datalist["skipped"]) == ["broken.png", "truncated.dcm"]
    assert all(s["reason"] for s in datalist["skipped"])
    items, problems = enumerate_source(tmp_path / "d", "dicoms", "xray", skip_bad=True)
    assert len(items) == 1 and len(problems) == 2


def test_empty_source_is_an_error_naming_it(tmp_path: Path) -> None:
    sources = three_domains(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(MultiDomainError, match=r"source 'nothing' \(.*empty\): no usable image"):
        build_multidomain_datalist([*sources, ("nothing", tmp_path / "empty", "us")])
    (tmp_path / "blank").mkdir()
    write_nifti(tmp_path / "blank" / "air.nii", np.full((8, 8, 6), -1000, np.int16))  # every slice empty
    with pytest.raises(MultiDomainError, match=r"source 'air'.*no usable image \(6 empty slices left out\)"):
        enumerate_source(tmp_path / "blank", "air", "ct", skip_bad=True)
    with pytest.raises(FileNotFoundError, match="source 'gone'"):
        build_multidomain_datalist([("gone", tmp_path / "missing", "ct")])


def test_cli_writes_datalist_and_skipped_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scripts import prepare_multidomain

    three_domains(tmp_path)
    (tmp_path / "a" / "bad.dcm").write_bytes(b"DICM garbage")
    out = tmp_path / "out" / "md.json"
    args = ["--source", f"cxr={tmp_path / 'a'}:xray", "--source", f"b:rain={tmp_path / 'b'}:mr", "--out", str(out)]
    assert prepare_multidomain.main([*args, "--workers", "1"]) == 2
    assert "bad.dcm" in capsys.readouterr().err and not out.exists()
    assert prepare_multidomain.main([*args, "--workers", "1", "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "cxr" in printed and "b:rain" in printed and "skipped 1 bad file" in printed
    datalist = json.loads(out.read_text())
    assert datalist["counts"]["domain"] == {"cxr": 3, "b:rain": 2}
    report = json.loads((out.parent / "md.skipped.json").read_text())
    assert report["count"] == 1 and report["skipped"][0]["file"].endswith("bad.dcm")
    assert prepare_multidomain.parse_source("x=/mnt/c:/data:us") == ("x", "/mnt/c:/data", "us")


def test_cli_bad_input_is_one_line_error(tmp_path: Path) -> None:
    three_domains(tmp_path)
    bad = tmp_path / "a" / "truncated.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n")
    cmd = [sys.executable, str(SCRIPT), "--source", f"cxr={tmp_path / 'a'}:xray", "--out", str(tmp_path / "o.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "truncated.png" in lines[0] and lines[0].startswith("error: ")


# ----------------------------------------------------------------------------- demo set and the transform


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    sources = make_demo_multidomain(tmp_path_factory.mktemp("md_demo"), seed=0, size=96)
    return build_multidomain_datalist([(name, folder, group) for name, (folder, group) in sources.items()])


def test_demo_multidomain_counts(demo: dict) -> None:
    assert len(demo["domains"]) >= 4 and sum(n > 0 for n in demo["counts"]["group"].values()) >= 3
    assert demo["counts"] == {
        "domain": {"ct": 18, "mr": 10, "us": 1, "fundus": 2, "xray_other": 1},
        "group": {"xray": 1, "ct": 18, "mr": 10, "us": 1, "other": 2},
    }
    assert demo["skipped_empty_slices"] == {"ct": 6, "mr": 2, "us": 0, "fundus": 0, "xray_other": 0}
    folder = Path(demo["sources"]["ct"]["folder"]).parent
    assert "SYNTHETIC" in (folder / "README.txt").read_text()
    for name in ("mr", "us", "xray_other"):
        (dcm,) = (folder / name).glob("*.dcm")
        ds = pydicom.dcmread(dcm, stop_before_pixels=True)
        assert "SYNTHETIC" in str(ds.PatientName) and "SYNTHETIC" in ds.ImageComments
    assert pydicom.dcmread(next((folder / "xray_other").glob("*.dcm"))).PhotometricInterpretation == "MONOCHROME1"


def test_load_sliced_then_resized_collates(demo: dict, tmp_path: Path) -> None:
    from monai.data import DataLoader, Dataset, MetaTensor, PersistentDataset
    from monai.data.utils import pickle_hashing
    from monai.transforms import Compose, Resized

    from common.data.cache import source_aware_hash

    transform = Compose([LoadSliced(keys="image"), Resized(keys="image", spatial_size=(64, 64))])
    picks = [next(it for it in demo["items"] if it["domain"] == d) for d in demo["domains"]]
    for item in picks:
        out = transform(dict(item))
        image = out["image"]
        assert isinstance(image, MetaTensor) and tuple(image.shape) == (1, 64, 64) and image.dtype == torch.float32
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0 and float(image.max()) > 0.5
        assert isinstance(out["domain_index"], int) and isinstance(out["group_index"], int)
        torch.testing.assert_close(transform(dict(item))["image"].as_tensor(), image.as_tensor())  # deterministic
    # hand radiograph (MONOCHROME1): air dark at the corner, the hand bright
    hand = LoadSliced()(dict(picks[-1]))["image"][0]
    assert float(hand[0, 0]) < 0.1 and float(hand.max()) > 0.8
    batch = next(iter(DataLoader(Dataset(picks, transform), batch_size=len(picks))))
    assert tuple(batch["image"].shape) == (len(picks), 1, 64, 64)
    assert batch["domain_index"].tolist() == list(range(len(picks)))
    assert batch["group_index"].tolist() == [GROUPS.index(demo["sources"][d]["group"]) for d in demo["domains"]]
    assert batch["frame"].tolist()[2:] == [-1, -1, -1]
    # through the bundles' persistent cache (a corrupt or unloadable entry would warn, an error here)
    cached = Compose([LoadSliced(), Resized(keys="image", spatial_size=(64, 64), mode="area")])
    for _ in range(2):  # fill, then read back
        cache = {"cache_dir": tmp_path, "hash_func": source_aware_hash, "hash_transform": pickle_hashing}
        dataset = PersistentDataset(picks, cached, track_meta=True, **cache)
        loaded = next(iter(DataLoader(dataset, batch_size=len(picks), sampler=balanced_sampler(picks, seed=1))))
        assert tuple(loaded["image"].shape) == (len(picks), 1, 64, 64) and loaded["domain_index"].dtype == torch.int64


def test_make_demo_data_script_writes_the_multidomain_datalist(tmp_path: Path) -> None:
    from scripts import make_demo_data

    out = tmp_path / "md"
    args = ["--out", str(tmp_path / "siim"), "--n-images", "2", "--size", "64", "--multidomain-out", str(out)]
    assert make_demo_data.main(args) == 0
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["counts"]["domain"] == {"ct": 18, "mr": 10, "us": 1, "fundus": 2, "xray_other": 1}
    assert all(Path(it["image"]).is_absolute() and Path(it["image"]).is_file() for it in datalist["items"])


# ----------------------------------------------------------------------------- real data

REAL_SOURCES = [
    ("cxr", "xray"),
    ("ct", "ct"),
    ("mr", "mr"),
    ("us", "us"),
    ("nm", "other"),
    ("cr_other", "xray"),
    ("fundus", "other"),
    ("histology", "other"),
]


@pytest.mark.realdata
def test_real_multidomain_aggregation() -> None:
    root = shared_path("multidomain")
    datalist = build_multidomain_datalist(
        [(name, root / name, group) for name, group in REAL_SOURCES], axis=2, stride=8, min_foreground=0.05
    )
    # cxr: 8 files (one is a lung mask PNG kept in that folder); ct: 3 DICOMs (the enhanced CT has 2 frames,
    # stride 8 keeps frame 0) + 14 slices of the 108-slice head CT + 5 PNGs; mr: 2 DICOMs + frames 0 and 8
    # of the 10-frame one + 5 brain volumes x 17 non-empty axial slices (33 empty ones left out)
    assert datalist["counts"] == {
        "domain": {
            "cxr": 8,
            "ct": 22,
            "mr": 89,
            "us": 6,
            "nm": 1,
            "cr_other": 1,
            "fundus": 2,
            "histology": 1,
        },
        "group": {"xray": 9, "ct": 22, "mr": 89, "us": 6, "other": 4},
    }
    assert datalist["skipped_empty_slices"]["mr"] == 33 and sum(datalist["skipped_empty_slices"].values()) == 33
    assert datalist["skipped"] == [] and [Path(f).name for f in datalist["ignored_files"]] == ["aal.nii.txt"]
    for item in datalist["items"]:
        image = read_slice(item)
        assert image.dtype == np.float32 and image.ndim == 2 and np.isfinite(image).all(), item
        assert image.min() >= 0.0 and image.max() <= 1.0, item
    # the single-frame X-ray DICOM (MONOCHROME1, VOI window) reads as read_dicom reads it
    cr = next(it for it in datalist["items"] if it["domain"] == "cr_other")
    np.testing.assert_array_equal(read_slice(cr), read_dicom(cr["image"])[0])
