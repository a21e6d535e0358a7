"""prepare_siim: split sizes, determinism, labelled fraction, folder datasets, and every bad input."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data.datalist import (
    SPLIT_KEYS,
    DataValidationError,
    load_or_build_datalist,
    mask_is_positive,
    scan_siim,
    split_items,
)
from common.data.imaging import read_mask
from scripts.prepare_siim import main as prepare_siim
from tests.conftest import read_json, shared_path


def _prepare(tmp_path: Path, *args: str, name: str = "datalist.json") -> tuple[int, Path]:
    out = tmp_path / name
    return prepare_siim([*args, "--out", str(out), "--workers", "1"]), out


def test_demo_split_sizes_and_labelled_fraction(tmp_path: Path, tiny_siim: Path) -> None:
    code, out = _prepare(tmp_path, "--siim-dir", str(tiny_siim), "--labelled-fraction", "0.25", "--seed", "7")
    assert code == 0
    d = read_json(out)
    c = d["counts"]
    assert c["validation"] + c["test"] + c["training_labelled"] + c["training_unlabelled"] == 24
    assert 3 <= c["validation"] <= 5 and 3 <= c["test"] <= 5
    n_train = c["training_labelled"] + c["training_unlabelled"]
    assert abs(c["training_labelled"] - 0.25 * n_train) <= 2  # rounded per stratum
    assert all("rle" in it for it in d["training_labelled"] + d["validation"] + d["test"])
    assert all(set(it) == {"id", "image"} for it in d["training_unlabelled"])  # no label leaks
    assert any(it["positive"] for it in d["validation"]) and any(it["positive"] for it in d["test"])
    ids = [it["id"] for k in ("training_labelled", "training_unlabelled", "validation", "test") for it in d[k]]
    assert len(ids) == len(set(ids)) == 24


def test_same_seed_same_split_other_seed_other_split(tmp_path: Path, tiny_siim: Path) -> None:
    _, a = _prepare(tmp_path, "--siim-dir", str(tiny_siim), "--seed", "1", name="a.json")
    _, b = _prepare(tmp_path, "--siim-dir", str(tiny_siim), "--seed", "1", name="b.json")
    _, c = _prepare(tmp_path, "--siim-dir", str(tiny_siim), "--seed", "2", name="c.json")
    assert a.read_text() == b.read_text()
    assert read_json(a)["test"] != read_json(c)["test"]


def _demo_index(item: dict) -> int:
    return int(item["id"].split(".")[-2])  # make_demo_siim names image i <UID_ROOT><seed>.<i>.3


def test_siim_split_for_a_seed_is_unchanged(tmp_path: Path, tiny_siim: Path) -> None:
    """The split of the demo data (24 images, demo seed 3) at split seed 0, as the code before issue 17 made it."""
    code, out = _prepare(tmp_path, "--siim-dir", str(tiny_siim), "--labelled-fraction", "0.25", "--seed", "0")
    assert code == 0
    d = read_json(out)
    assert {k: sorted(_demo_index(it) for it in d[k]) for k in SPLIT_KEYS} == {
        "training_labelled": [0, 6, 10, 15, 20],
        "training_unlabelled": [2, 3, 4, 5, 7, 8, 9, 11, 12, 16, 17, 18, 19],
        "validation": [13, 22, 23],
        "test": [1, 14, 21],
    }
    assert all(set(it) == {"id", "image", "rle", "positive"} for it in d["validation"] + d["test"])
    assert all(it["positive"] == bool(it["rle"]) for it in d["training_labelled"] + d["validation"] + d["test"])
    assert (d["counts"]["positive_labelled"], d["counts"]["positive_validation"], d["counts"]["positive_test"]) == (
        2,
        1,
        1,
    )


def test_labelled_subsets_are_nested_and_keep_val_test() -> None:
    items = [{"id": f"{i:03d}", "image": f"{i}.dcm", "positive": i % 3 == 0} for i in range(200)]
    small, large = split_items(items, 0.1, seed=0), split_items(items, 0.5, seed=0)
    assert small["validation"] == large["validation"] and small["test"] == large["test"]
    assert {it["id"] for it in small["training_labelled"]} < {it["id"] for it in large["training_labelled"]}
    assert len(small["training_labelled"]) == 14 and len(small["validation"]) == 30
    shuffled = split_items(list(reversed(items)), 0.1, seed=0)
    assert shuffled == small  # independent of listing order


def _copy(tiny_siim: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_siim, tmp_path / "siim"))


def _csv_rows(siim: Path) -> list[list[str]]:
    with open(siim / "train-rle.csv", newline="") as f:
        return list(csv.reader(f))


def _write_rows(siim: Path, rows: list[list[str]]) -> None:
    with open(siim / "train-rle.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _first_positive_row(rows: list[list[str]]) -> int:
    return next(i for i, r in enumerate(rows) if i > 0 and r[1].strip() != "-1")


def _break_truncated_dicom(siim: Path) -> str:
    path = sorted(siim.rglob("*.dcm"))[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])  # cut inside the pixel data
    return rf"{path.name}: (unreadable DICOM|pixel data cannot be decoded)"


def _break_missing_image(siim: Path) -> str:
    path = sorted(siim.rglob("*.dcm"))[1]
    path.unlink()
    return rf"line \d+ \(ImageId {path.stem}\): image not found"


def _break_image_without_row(siim: Path) -> str:
    rows = _csv_rows(siim)
    victim = rows[3][0]
    _write_rows(siim, [r for r in rows if r[0] != victim])
    return rf"{victim}\.dcm: image has no row in train-rle.csv"


def _break_odd_tokens(siim: Path) -> str:
    rows = _csv_rows(siim)
    i = _first_positive_row(rows)
    rows[i][1] += " 7"
    _write_rows(siim, rows)
    return rf"line {i + 1} \(ImageId {rows[i][0]}\): malformed RLE: odd number of tokens"


def _break_runs_past_end(siim: Path) -> str:
    rows = _csv_rows(siim)
    i = _first_positive_row(rows)
    rows[i][1] = " 16000 500"  # a 128x128 mask has 16384 pixels
    _write_rows(siim, rows)
    return rf"train-rle\.csv line {i + 1} \(ImageId {rows[i][0]}\): runs go past the end of the 128x128 image"


BREAKERS = [
    _break_truncated_dicom,
    _break_missing_image,
    _break_image_without_row,
    _break_odd_tokens,
    _break_runs_past_end,
]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.removeprefix("_break_"))
def test_bad_siim_input_is_named_then_skipped_and_reported(tmp_path: Path, tiny_siim: Path, breaker, capsys) -> None:
    siim = _copy(tiny_siim, tmp_path)
    expected = breaker(siim)
    code, out = _prepare(tmp_path, "--siim-dir", str(siim))
    assert code == 2 and not out.exists()
    assert re.search(expected, capsys.readouterr().err)
    code, out = _prepare(tmp_path, "--siim-dir", str(siim), "--skip-bad")
    assert code == 0
    d = read_json(out)
    report = read_json(tmp_path / "datalist.skipped.json")
    assert d["counts"]["skipped"] == report["count"] == 1
    assert re.search(expected, f"{report['skipped'][0]['where']}: {report['skipped'][0]['problem']}")
    assert "skipped 1 bad item" in capsys.readouterr().out
    n = sum(d["counts"][k] for k in ("training_labelled", "training_unlabelled", "validation", "test"))
    assert n == 23


def _write_folder(root: Path, n: int, mismatch: str | None = None, empty: set[int] = frozenset()) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 40 + 3 * i, 50 + i
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(images / f"case{i:02d}.jpg")
        mh, mw = (h + 1, w) if f"case{i:02d}" == mismatch else (h, w)
        mask = np.zeros((mh, mw), np.uint8)
        mask[5:15, 5:20] = 0 if i in empty else 255
        Image.fromarray(mask).save(masks / f"case{i:02d}.png")
    return images, masks


def test_folder_dataset_any_size_rgb(tmp_path: Path) -> None:
    images, masks = _write_folder(tmp_path, 20)
    code, out = _prepare(tmp_path, "--image-dir", str(images), "--mask-dir", str(masks), "--labelled-fraction", "0.5")
    assert code == 0
    d = read_json(out)
    assert d["source"] == "folder" and d["counts"]["validation"] == 3 and d["counts"]["test"] == 3
    assert all(it["label"].startswith("masks/") for it in d["training_labelled"])


def _check_stratified(d: dict, positive_ids: set[str]) -> None:
    """Every split (and the labelled subset) holds the whole set's positive share, within one image."""
    for key in ("training_labelled", "validation", "test"):
        assert all(it["positive"] == (it["id"] in positive_ids) for it in d[key])
    n_all = sum(len(d[k]) for k in SPLIT_KEYS)
    train = d["training_labelled"] + d["training_unlabelled"]
    share = len(positive_ids) / n_all
    for items in (d["validation"], d["test"], train):
        assert abs(sum(it["id"] in positive_ids for it in items) - share * len(items)) <= 1
    train_share = sum(it["id"] in positive_ids for it in train) / len(train)
    n_pos_labelled = sum(it["positive"] for it in d["training_labelled"])
    assert abs(n_pos_labelled - train_share * len(d["training_labelled"])) <= 1
    assert d["counts"]["positive_labelled"] == n_pos_labelled
    assert d["counts"]["positive_validation"] == sum(it["positive"] for it in d["validation"])
    assert d["counts"]["positive_test"] == sum(it["positive"] for it in d["test"])


def test_folder_split_is_stratified_by_mask_foreground(tmp_path: Path) -> None:
    empty = {i for i in range(40) if i % 4 != 1}  # 10 positive masks, 30 empty ones
    images, masks = _write_folder(tmp_path / "data", 40, empty=empty)
    positive_ids = {f"case{i:02d}" for i in range(40) if i not in empty}
    args = ["--image-dir", str(images), "--mask-dir", str(masks), "--labelled-fraction", "0.5", "--seed", "1"]
    code, out = _prepare(tmp_path, *args)
    assert code == 0
    verified = read_json(out)
    _check_stratified(verified, positive_ids)
    assert sum(it["positive"] for it in verified["validation"]) == sum(it["positive"] for it in verified["test"]) == 2
    code, out = _prepare(tmp_path, *args, "--no-verify", name="unverified.json")  # the masks alone are read
    assert code == 0
    unverified = read_json(out)
    assert {k: unverified[k] for k in SPLIT_KEYS} == {k: verified[k] for k in SPLIT_KEYS}
    assert unverified["counts"] == verified["counts"]
    built = load_or_build_datalist(str(tmp_path / "data"), labelled_fraction=0.5, split_seed=1)  # what bundles do
    assert {k: [it["id"] for it in built[k]] for k in SPLIT_KEYS} == {
        k: [it["id"] for it in verified[k]] for k in SPLIT_KEYS
    }
    assert all(it["positive"] == (it["id"] in positive_ids) for it in built["validation"] + built["test"])


def test_mask_is_positive_agrees_with_read_mask(tmp_path: Path) -> None:
    import nibabel as nib

    zeros = np.zeros((20, 30), np.uint8)
    spot = zeros.copy()
    spot[3:6, 4:9] = 1
    masks = {
        "empty.png": Image.fromarray(zeros),
        "ones.png": Image.fromarray(spot),
        "full255.png": Image.fromarray(spot * 255),
        "rgb.png": Image.fromarray(np.stack([spot * 255] * 3, axis=-1)),
        "faint_blue.png": Image.fromarray(np.stack([zeros, zeros, spot], axis=-1)),  # luminance 0 for read_mask
        "palette.png": Image.fromarray(spot * 255).convert("P"),
        "sixteen.png": Image.fromarray(spot.astype(np.uint16) * 1000),
        "empty.jpg": Image.fromarray(zeros),
        "spot.jpg": Image.fromarray(spot * 255),
    }
    for name, image in masks.items():
        image.save(tmp_path / name)
    for name, array in {"empty.nii.gz": zeros, "spot.nii.gz": spot}.items():
        nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), tmp_path / name)
    found = {p.name: mask_is_positive(p) for p in sorted(tmp_path.iterdir())}
    assert found == {p.name: bool(read_mask(p).any()) for p in sorted(tmp_path.iterdir())}
    assert not found["empty.png"] and not found["empty.nii.gz"] and found["ones.png"] and found["spot.nii.gz"]


def test_unreadable_mask_is_named_without_verification(tmp_path: Path, capsys) -> None:
    images, masks = _write_folder(tmp_path / "data", 8)
    (masks / "case03.png").write_bytes(b"not a png")
    code, _ = _prepare(tmp_path, "--image-dir", str(images), "--mask-dir", str(masks), "--no-verify")
    assert code == 2 and "case03.png: unreadable image" in capsys.readouterr().err
    code, out = _prepare(tmp_path, "--image-dir", str(images), "--mask-dir", str(masks), "--no-verify", "--skip-bad")
    assert code == 0 and read_json(out)["counts"]["skipped"] == 1
    with pytest.raises(DataValidationError, match=r"--image-dir .*--mask-dir(.|\n)*case03\.png: unreadable image"):
        load_or_build_datalist(str(tmp_path / "data"))


def test_folder_mask_size_mismatch_and_orphans(tmp_path: Path, capsys) -> None:
    images, masks = _write_folder(tmp_path, 6, mismatch="case02")
    (images / "lonely.png").write_bytes((images / "case00.jpg").read_bytes())
    code, _ = _prepare(tmp_path, "--image-dir", str(images), "--mask-dir", str(masks))
    err = capsys.readouterr().err
    assert code == 2
    assert "case02.png: mask size 47x52 does not match image case02.jpg (46x52)" in err
    assert "lonely.png: no mask named 'lonely.*'" in err


def test_bundle_side_build_refuses_bad_layout_with_the_fix(tmp_path: Path, tiny_siim: Path) -> None:
    siim = _copy(tiny_siim, tmp_path)
    _break_missing_image(siim)
    with pytest.raises(DataValidationError, match=r"prepare_siim\.py --siim-dir"):
        load_or_build_datalist(str(siim))
    with pytest.raises(FileNotFoundError, match="make demo-data"):
        load_or_build_datalist(str(tmp_path / "nowhere"))


@pytest.mark.realdata
def test_real_sample_csv_with_one_image(tmp_path: Path, capsys) -> None:
    siim = shared_path("siim_sample")
    code, _ = _prepare(tmp_path, "--siim-dir", str(siim))
    assert code == 2 and "12046 bad input item(s)" in capsys.readouterr().err
    code, out = _prepare(tmp_path, "--siim-dir", str(siim), "--skip-bad")
    assert code == 0
    d = read_json(out)
    assert d["counts"]["skipped"] == 12046  # every CSV image but the one DICOM shipped
    assert d["counts"]["training_labelled"] == 1 and d["training_labelled"][0]["rle"] == []
    scan = scan_siim(siim)
    assert len(scan.items) == 1 and scan.items[0]["positive"] is False


@pytest.mark.realdata
def test_real_cxr_lungs_folder(tmp_path: Path) -> None:
    root = shared_path("cxr_lungs")
    code, out = (
        prepare_siim(
            [
                "--image-dir",
                str(root / "images"),
                "--mask-dir",
                str(root / "masks"),
                "--out",
                str(tmp_path / "d.json"),
                "--labelled-fraction",
                "0.2",
                "--workers",
                "2",
            ]
        ),
        tmp_path / "d.json",
    )
    assert code == 0
    d = read_json(out)
    c = d["counts"]
    assert (c["validation"], c["test"], c["training_labelled"], c["training_unlabelled"]) == (15, 15, 14, 56)
    # every radiologist lung mask has foreground: every labelled item is positive, and counted so
    assert all(it["positive"] is True for k in ("training_labelled", "validation", "test") for it in d[k])
    assert (c["positive_labelled"], c["positive_validation"], c["positive_test"]) == (14, 15, 15)
    built = load_or_build_datalist(str(root), labelled_fraction=0.2)  # the bundles' path reads the masks alone
    assert all(it["positive"] is True for it in built["training_labelled"] + built["validation"] + built["test"])
    assert [it["id"] for it in built["test"]] == [it["id"] for it in d["test"]]
