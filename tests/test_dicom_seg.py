"""DICOM in, DICOM SEG out: SaveMaskd's ``dicom_seg`` option, in process and through the trained baseline bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.data import MetaTensor
from PIL import Image
from pydicom.uid import RLELossless, SegmentationStorage, generate_uid

from common.data.imaging import stem
from common.deploy.dicom_seg import DicomSegError
from common.deploy.masks import SaveMaskd
from tests.conftest import BASELINE, copy_bundle, read_json, run_bundle, shared_path, tiny_train_overrides

VERSION = read_json(BASELINE / "configs" / "metadata.json")["version"]


def monochrome1_rle(src: Path, dest: Path) -> Path:
    """A non-square (128x96), MONOCHROME1, RLE-compressed copy of a synthetic DICOM, with its own SOP UID."""
    ds = pydicom.dcmread(src)
    pixels = np.ascontiguousarray(255 - ds.pixel_array[:, 16:112])
    ds.Rows, ds.Columns = pixels.shape
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = pixels.tobytes()
    ds.compress(RLELossless)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def check_seg(seg_path: Path, source: Path, png: Path) -> np.ndarray:
    """Assert the SEG's references, geometry, segment and algorithm; its frame equals the PNG. Return the frame."""
    src = pydicom.dcmread(source, stop_before_pixels=True)
    raw = pydicom.dcmread(seg_path)
    assert raw.SOPClassUID == SegmentationStorage and raw.Modality == "SEG" and raw.SegmentationType == "BINARY"
    assert (raw.Rows, raw.Columns) == (src.Rows, src.Columns) and int(raw.NumberOfFrames) == 1
    assert raw.StudyInstanceUID == src.StudyInstanceUID and raw.SeriesInstanceUID != src.SeriesInstanceUID
    ref_series = raw.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref_series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    seg = hd.seg.segread(seg_path)
    assert seg.get_source_image_uids() == [(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID)]
    description = seg.get_segment_description(1)
    assert description.segment_label == "Pneumothorax" and seg.number_of_segments == 1
    assert description.segmented_property_type.value == "36118008"  # SCT Pneumothorax
    algorithm = description.algorithm_identification[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("baseline", VERSION)
    frame = seg.get_pixels_by_source_instance(source_sop_instance_uids=[src.SOPInstanceUID], segment_numbers=[1])
    mask = np.asarray(Image.open(png))
    np.testing.assert_array_equal(frame[0, :, :, 0], mask)
    np.testing.assert_array_equal(raw.pixel_array, mask)  # the stored frame too, read by pydicom alone
    return mask


# ----------------------------------------------------------------------------- SaveMaskd in process


def item(path: Path, mask: np.ndarray) -> dict:
    """A decollated post-processing item as SaveMaskd receives it (image metadata, (rows, cols) pred)."""
    meta = {"filename_or_obj": str(path), "source_affine": torch.eye(4, dtype=torch.float64)}
    return {"image": MetaTensor(torch.zeros(1, 1, 1), meta=meta), "pred": mask}


def test_seg_frame_keeps_orientation_on_a_non_square_monochrome1_rle_source(tiny_siim: Path, tmp_path: Path) -> None:
    source = monochrome1_rle(sorted(tiny_siim.rglob("*.dcm"))[0], tmp_path / "m1.dcm")
    mask = np.zeros((128, 96), dtype=np.uint8)
    mask[10:90, 5:15] = 1  # an L: any transpose or flip changes it
    mask[80:90, 5:70] = 1
    out = SaveMaskd(output_dir=tmp_path / "out", dicom_seg="true", algorithm_name="baseline", algorithm_version=VERSION)
    d = out(item(source, mask))
    assert Path(d["pred_dicom_seg_path"]) == tmp_path / "out" / "m1_seg.dcm"
    np.testing.assert_array_equal(check_seg(Path(d["pred_dicom_seg_path"]), source, Path(d["pred_path"])), mask)
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind


def test_empty_mask_still_gives_one_full_frame(tiny_siim: Path, tmp_path: Path) -> None:
    source = sorted(tiny_siim.rglob("*.dcm"))[0]
    d = SaveMaskd(output_dir=tmp_path, dicom_seg=True)(item(source, np.zeros((128, 128), np.uint8)))
    assert pydicom.dcmread(d["pred_dicom_seg_path"]).pixel_array.shape == (128, 128)


def test_mask_of_another_size_is_refused_naming_the_file(tiny_siim: Path, tmp_path: Path) -> None:
    source = sorted(tiny_siim.rglob("*.dcm"))[0]
    with pytest.raises(DicomSegError, match=stem(source)):
        SaveMaskd(output_dir=tmp_path, dicom_seg=True)(item(source, np.zeros((64, 64), np.uint8)))


def test_non_dicom_input_is_written_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save = SaveMaskd(output_dir=tmp_path / "out", dicom_seg=True)
    for name in ("a.png", "b.nii.gz"):
        d = save(item(tmp_path / name, np.ones((8, 6), np.uint8)))
        assert Path(d["pred_path"]).is_file() and "pred_dicom_seg_path" not in d
    assert save.seg_skipped == 2 and "no DICOM SEG for" in caplog.text
    assert not list((tmp_path / "out").glob("*.dcm"))


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("true", True), ("False", False), ("0", False)])
def test_option_accepts_cli_strings(value: bool | str, expected: bool) -> None:
    assert SaveMaskd(dicom_seg=value).dicom_seg is expected


def test_option_refuses_other_strings() -> None:
    with pytest.raises(ValueError, match="dicom_seg"):
        SaveMaskd(dicom_seg="maybe")


def test_inference_config_defaults_to_no_seg(tmp_path: Path) -> None:
    workflow = ConfigWorkflow(
        config_file=str(BASELINE / "configs" / "inference.json"), workflow_type="infer", bundle_root=str(tmp_path)
    )
    workflow.initialize()
    save = workflow.parser.get_parsed_content("save_transform")
    assert save.dicom_seg is False and save.algorithm_version == VERSION


# ----------------------------------------------------------------------------- through the bundle CLI


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_siim: Path) -> Path:
    """The baseline bundle copied to ``<tmp>/baseline`` and trained one epoch on the tiny data."""
    bundle = copy_bundle("baseline", tmp_path_factory.mktemp("seg_bundle") / "baseline")
    run_bundle([bundle / "configs" / "train.json"], *tiny_train_overrides(tiny_siim, bundle), cwd=bundle.parent)
    return bundle


def infer_with_seg(bundle: Path, inputs: Path, out: Path) -> str:
    """Run the bundle's inference.json with ``--dicom_seg true``; return its log."""
    proc = run_bundle(
        [bundle / "configs" / "inference.json"],
        *("--input_dir", str(inputs), "--output_dir", str(out), "--image_size", "64", "--dicom_seg", "true"),
        cwd=out.parent,
    )
    return proc.stdout + proc.stderr


def png_from(dicom: Path, dest: Path) -> Path:
    """An 8-bit PNG of a DICOM's pixels (a non-DICOM input for the same run)."""
    Image.fromarray(pydicom.dcmread(dicom).pixel_array).save(dest)
    return dest


@pytest.mark.slow
def test_bundle_writes_seg_beside_png_for_dicom_inputs(trained: Path, tiny_siim: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    sources = sorted(tiny_siim.rglob("*.dcm"))
    dicoms = [Path(shutil.copy(p, inputs / f"chest{i}.dcm")) for i, p in enumerate(sources[:2])]
    dicoms.append(monochrome1_rle(sources[2], inputs / "mono1.dcm"))
    png_from(sources[0], inputs / "photo.png")
    out = tmp_path / "masks"
    log = infer_with_seg(trained, inputs, out)
    masks = [check_seg(out / f"{dcm.stem}_seg.dcm", dcm, out / f"{dcm.stem}_seg.png") for dcm in dicoms]
    assert any(0 < m.mean() < 1 for m in masks), "every mask is uniform: the pixel comparison proves little"
    assert (out / "photo_seg.png").is_file() and not (out / "photo_seg.dcm").exists()
    assert "no DICOM SEG for" in log and str(inputs / "photo.png") in log


@pytest.mark.slow
@pytest.mark.realdata
def test_bundle_writes_full_resolution_seg_for_real_dicoms(trained: Path, tmp_path: Path) -> None:
    siim = sorted(shared_path("siim_sample", "dicom-images-train").glob("*.dcm"))  # 1024², JPEG Baseline
    extra = sorted(shared_path("siim_sample", "extra_real_cxr_dicom").glob("*.dcm"))  # 1955x1841, MONOCHROME1
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in siim + extra:
        shutil.copy(path, inputs / path.name)
    out = tmp_path / "masks"
    infer_with_seg(trained, inputs, out)
    shapes = {}
    for path in siim + extra:
        shapes[path.name] = check_seg(out / f"{stem(path)}_seg.dcm", path, out / f"{stem(path)}_seg.png").shape
    assert shapes[siim[0].name] == (1024, 1024)
    assert set(shapes[p.name] for p in extra) == {(1955, 1841)}
