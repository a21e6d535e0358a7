"""Bad data input (issue 11): each case is a one-line answer naming the file or CSV line, or a listed skip.

Every test runs the Python API and ``scripts/prepare_siim.py``: without ``--skip-bad`` the last line on
stderr is the problem and the exit code 2; with it the item is left out, counted and listed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data.datalist import (
    SPLIT_KEYS,
    DataValidationError,
    build_datalist,
    load_datalist,
    mask_is_positive,
    read_rle_csv,
    scan_folder,
    scan_siim,
)
from common.data.imaging import ImageReadError, read_image, read_mask
from tests.conftest import REPO, read_json
from tests.test_datalist import _copy, _csv_rows, _prepare, _write_rows


def _last_err_line(capsys: pytest.CaptureFixture) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def _ids(datalist: dict) -> set[str]:
    return {it["id"] for key in SPLIT_KEYS for it in datalist[key]}


def _skipped_report(tmp_path: Path) -> list[str]:
    report = read_json(tmp_path / "datalist.skipped.json")
    assert report["count"] == len(report["skipped"])
    return [f"{p['where']}: {p['problem']}" for p in report["skipped"]]


def _append_row(siim: Path, row: list[str]) -> int:
    """Append ``row`` to the CSV of ``siim``; its line number."""
    rows = [*_csv_rows(siim), row]
    _write_rows(siim, rows)
    return len(rows)


def _fails_then_is_skipped(
    tmp_path: Path, siim: Path, image_id: str, problem: str, capsys, found_by_scan: bool = True
) -> None:
    """The API and prepare_siim name ``problem`` alone (the last line, exit 2); --skip-bad leaves the image out
    and lists it. ``found_by_scan``: the CSV alone shows it (no pixel read), so the image is never an item."""
    if found_by_scan:
        scan = scan_siim(siim)
        assert [str(p) for p in scan.problems] == [problem]
        assert image_id not in {it["id"] for it in scan.items}
    with pytest.raises(DataValidationError) as info:
        build_datalist(scan_siim(siim), labelled_fraction=1.0, seed=0)
    assert [str(p) for p in info.value.problems] == [problem]

    code, out = _prepare(tmp_path, "--siim-dir", str(siim))
    assert code == 2 and not out.exists()
    assert _last_err_line(capsys) == f"  - {problem}"
    code, out = _prepare(tmp_path, "--siim-dir", str(siim), "--skip-bad")
    assert code == 0
    datalist = read_json(out)
    assert image_id not in _ids(datalist) and len(_ids(datalist)) == 23 and datalist["counts"]["skipped"] == 1
    assert _skipped_report(tmp_path) == [problem]
    assert "skipped 1 bad item(s)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 6: symbolic links


def test_symlinked_images_and_masks_keep_their_link_paths(tmp_path: Path, capsys) -> None:
    store, data = tmp_path / "pacs_export", tmp_path / "data"
    (store / "more").mkdir(parents=True)
    for d in ("images", "masks"):
        (data / d).mkdir(parents=True)
    spot = np.zeros((24, 32), np.uint8)
    spot[4:9, 5:12] = 255
    for i in range(12):
        sub = "more/" if i >= 9 else ""  # three images reach the folder through a linked sub-folder
        Image.fromarray(np.full((24, 32), 40 + 10 * i, np.uint8)).save(store / f"{sub}case{i:02d}.png")
        Image.fromarray(spot if i % 2 else spot * 0).save(store / f"case{i:02d}_mask.png")
        if not sub:
            os.symlink(store / f"case{i:02d}.png", data / "images" / f"case{i:02d}.png")
        os.symlink(store / f"case{i:02d}_mask.png", data / "masks" / f"case{i:02d}.png")
    os.symlink(store / "more", data / "images" / "more", target_is_directory=True)
    os.symlink(data / "images", data / "images" / "more" / "loop", target_is_directory=True)  # walked once

    scan = scan_folder(data / "images", data / "masks")
    assert scan.problems == [] and scan.base_dir == data
    datalist = build_datalist(scan, labelled_fraction=1.0, seed=0)
    items = {it["id"]: it for key in ("training_labelled", "validation", "test") for it in datalist[key]}
    assert len(items) == 12
    assert items["case10"]["image"] == "images/more/case10.png" and items["case03"]["label"] == "masks/case03.png"
    assert all(it["positive"] == (int(key[-2:]) % 2 == 1) for key, it in items.items())
    (tmp_path / "written.json").write_text(json.dumps(datalist))
    loaded = load_datalist(tmp_path / "written.json")  # paths joined to the recorded dataset folder
    labelled = loaded["training_labelled"] + loaded["validation"] + loaded["test"]
    assert all(Path(it["image"]).is_file() and Path(it["label"]).is_file() for it in labelled)

    code, out = _prepare(tmp_path, "--image-dir", str(data / "images"), "--mask-dir", str(data / "masks"))
    assert code == 0 and _ids(read_json(out)) == set(items)

    (store / "case04.png").unlink()  # a dangling link is named, not silently left out
    code, _ = _prepare(tmp_path, "--image-dir", str(data / "images"), "--mask-dir", str(data / "masks"))
    assert code == 2
    assert _last_err_line(capsys).endswith(
        f"images/case04.png: broken symbolic link (its target {store / 'case04.png'} is missing)"
    )


# ----------------------------------------------------------------------------- 7: Excel's byte-order mark


def test_csv_with_utf8_bom_is_read(tmp_path: Path, tiny_siim: Path, capsys) -> None:
    siim = _copy(tiny_siim, tmp_path)
    csv_path = siim / "train-rle.csv"
    csv_path.write_text("\ufeff" + csv_path.read_text() + ",\r\n", encoding="utf-8")  # BOM, a trailing blank row
    rows, problems, _ = read_rle_csv(csv_path)
    assert problems == [] and len(rows) == 24 and all(not key.startswith("\ufeff") for key in rows)
    scan = scan_siim(siim)
    assert scan.problems == [] and len(scan.items) == 24
    code, out = _prepare(tmp_path, "--siim-dir", str(siim))
    assert code == 0 and len(_ids(read_json(out))) == 24

    csv_path.write_text(csv_path.read_text(encoding="utf-8"), encoding="utf-16")  # Excel's "Unicode text"
    code, _ = _prepare(tmp_path, "--siim-dir", str(siim))
    assert code == 2
    assert _last_err_line(capsys).endswith(
        "train-rle.csv byte 0: not UTF-8 text: save the CSV as UTF-8 (Excel: 'CSV UTF-8')"
    )


# ----------------------------------------------------------------------------- 8: -1 beside a mask


def test_conflicting_rows_fail_then_are_skipped_and_listed(tmp_path: Path, tiny_siim: Path, capsys) -> None:
    siim = _copy(tiny_siim, tmp_path)
    rows = _csv_rows(siim)
    i = next(i for i, r in enumerate(rows) if i > 0 and r[1].strip() == "-1")
    line = _append_row(siim, [rows[i][0], " 100 5"])  # the same image: '-1' on line i + 1, then a mask
    expected = (
        f"train-rle.csv lines {i + 1}, {line} (ImageId {rows[i][0]}): "
        f"conflicting rows: '-1' (no mask) on line {i + 1}, a mask on line {line}"
    )
    _fails_then_is_skipped(tmp_path, siim, rows[i][0], f"{siim}/{expected}", capsys)  # never counted as positive


# ----------------------------------------------------------------------------- 9: a bad row of a multi-row image


def test_bad_row_of_a_multi_row_image_skips_the_whole_image(tmp_path: Path, tiny_siim: Path, capsys) -> None:
    siim = _copy(tiny_siim, tmp_path)
    rows = _csv_rows(siim)
    multi = next(r[0] for r in rows[1:] if sum(s[0] == r[0] for s in rows) == 2)  # an image with two mask rows
    lines = [n + 1 for n, r in enumerate(rows) if r[0] == multi]
    line = _append_row(siim, [multi, " 7 3", " 9"])  # a third row with a stray column
    expected = (
        f"train-rle.csv line {line} (ImageId {multi}): expected 'ImageId, EncodedPixels', "
        f"got ['{multi}', ' 7 3', ' 9'] (the image is left out with its other row(s): line {lines[0]}, {lines[1]})"
    )
    _fails_then_is_skipped(tmp_path, siim, multi, f"{siim}/{expected}", capsys)  # not kept with a partial mask


# ----------------------------------------------------------------------------- 10: a shape only in the alpha channel


def test_rgba_mask_drawn_in_the_alpha_channel(tmp_path: Path, capsys) -> None:
    spot = np.zeros((20, 30), np.uint8)
    spot[3:8, 4:12] = 255
    black, red = np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 255
    masks = {
        "alpha_only.png": Image.fromarray(np.dstack([black, spot]), "RGBA"),  # black, opaque where the mask is
        "alpha_only_red.png": Image.fromarray(np.dstack([red, spot]), "RGBA"),
        "gray_alpha.png": Image.fromarray(np.dstack([spot * 0, spot]), "LA"),
        "opaque_black.png": Image.fromarray(np.dstack([black, spot * 0 + 255]), "RGBA"),  # nothing drawn
        "colour_spot.png": Image.fromarray(np.dstack([np.dstack([spot] * 3), spot * 0 + 255]), "RGBA"),
    }
    for name, image in masks.items():
        image.save(tmp_path / name)
    found = {name: read_mask(tmp_path / name) for name in masks}
    for name in ("alpha_only.png", "alpha_only_red.png", "gray_alpha.png", "colour_spot.png"):
        np.testing.assert_array_equal(found[name], spot > 0, err_msg=name)
    assert not found["opaque_black.png"].any()
    assert {name: mask_is_positive(tmp_path / name) for name in masks} == {
        name: bool(mask.any()) for name, mask in found.items()
    }

    images, mask_dir = tmp_path / "data" / "images", tmp_path / "data" / "masks"
    images.mkdir(parents=True)
    mask_dir.mkdir()
    for i in range(10):
        Image.fromarray(np.full((20, 30), 50 + i, np.uint8)).save(images / f"case{i}.png")
        masks["alpha_only.png" if i % 2 else "opaque_black.png"].save(mask_dir / f"case{i}.png")
    for verify in (["--no-verify"], []):  # the masks read alone (mask_is_positive), then with their images
        code, out = _prepare(tmp_path, "--image-dir", str(images), "--mask-dir", str(mask_dir), *verify)
        assert code == 0
        datalist = read_json(out)
        labelled = [it for key in ("training_labelled", "validation", "test") for it in datalist[key]]
        assert len(labelled) == 10 and all(it["positive"] == (int(it["id"][-1]) % 2 == 1) for it in labelled)


# ----------------------------------------------------------------------------- DICOM reading


def test_not_a_dicom_file_says_so(tmp_path: Path, tiny_siim: Path, capsys) -> None:
    siim = _copy(tiny_siim, tmp_path)
    path = sorted(siim.rglob("*.dcm"))[2]
    path.write_text("<html>PACS login page</html>\n" * 20)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(info.value) == f"{path}: not a DICOM file (no DICM preamble)"

    problem = f"{path}: not a DICOM file (no DICM preamble)"
    _fails_then_is_skipped(tmp_path, siim, path.stem, problem, capsys, found_by_scan=False)


def test_truncated_dicom_is_one_message(tmp_path: Path, tiny_siim: Path, caplog) -> None:
    siim = _copy(tiny_siim, tmp_path)
    path = sorted(siim.rglob("*.dcm"))[0]
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"1.2.840.10008.1.2.1") + 8])  # cut inside the transfer syntax UID
    expected = f"{path}: DICOM file has no pixel data (truncated, or not an image)"

    with warnings.catch_warnings(record=True) as said, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        with pytest.raises(ImageReadError) as info:
            read_image(path)
    assert str(info.value) == expected
    assert said == [] and not any(r.name.startswith("pydicom") for r in caplog.records)

    cmd = [sys.executable, str(REPO / "scripts" / "prepare_siim.py"), "--siim-dir", str(siim)]
    cmd += ["--out", str(tmp_path / "d.json"), "--workers", "2"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count(path.name) == 1 and "Invalid value" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"  - {expected}"


# ----------------------------------------------------------------------------- RLE past the image


def test_rle_past_the_end_names_the_csv_line(tmp_path: Path, tiny_siim: Path, capsys) -> None:
    siim = _copy(tiny_siim, tmp_path)
    rows = _csv_rows(siim)
    i = next(i for i, r in enumerate(rows) if i > 0 and r[1].strip() != "-1")
    line = _append_row(siim, [rows[i][0], " 16380 10"])  # a second row of a positive image, past 16384 pixels
    expected = (
        f"train-rle.csv line {line} (ImageId {rows[i][0]}): "
        "runs go past the end of the 128x128 image (the last run ends at pixel 16390 of 16384)"
    )
    _fails_then_is_skipped(tmp_path, siim, rows[i][0], f"{siim}/{expected}", capsys, found_by_scan=False)
