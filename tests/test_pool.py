"""The unlabelled pool: real PNG and DICOM folders, the leak check, bad files, seeded subsets, the CLI and
what the bundles' auxiliary loaders read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser
from PIL import Image

from common.data.datalist import DataValidationError, build_datalist, resolve_paths, scan_dataset
from common.data.imaging import read_image
from common.data.pool import aux_items, pool_counts, seeded_subset, with_pool
from scripts.prepare_siim import main as prepare_siim
from tests.conftest import REPO, shared_path


@pytest.fixture(scope="module")
def labelled(tiny_siim: Path) -> dict:
    """The tiny synthetic SIIM set as a resolved datalist (70/15/15, all training images labelled)."""
    datalist = build_datalist(scan_dataset(tiny_siim), 1.0, 0, verify=False)
    return resolve_paths(datalist, datalist["dataset_dir"])


def _save_png(array: np.ndarray, path: Path, size: int | None = None) -> Path:
    image = Image.fromarray(np.round(array * 255).astype(np.uint8))
    if size:
        image = image.resize((size, size), Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def test_pool_from_real_png_and_dicom_folders_drops_their_overlap(tmp_path: Path) -> None:
    """siim_real's unlabelled_dicom/ holds the original 1024 px JPEG DICOMs of 40 of the 256 px PNGs in
    unlabelled/: with both folders, each of those PNGs is a duplicate of a pool DICOM and is dropped."""
    real = shared_path("siim_real")
    dicoms = sorted((real / "unlabelled_dicom").glob("*.dcm"))
    pngs = tmp_path / "png"
    pngs.mkdir()
    copies = [real / "unlabelled" / f"{d.stem}.png" for d in dicoms]
    others = sorted(set((real / "unlabelled").glob("*.png")) - set(copies))[:20]
    for png in [*copies, *others]:
        shutil.copy(png, pngs / png.name)
    datalist = build_datalist(scan_dataset(real / "labelled"), 1.0, 0, verify=False)
    out = with_pool(resolve_paths(datalist, datalist["dataset_dir"]), [real / "unlabelled_dicom", pngs], seed=0)
    pool = out["pool"]
    assert pool["found"] == {"unlabelled_dicom": 40, "png": 60}
    assert pool["used"] == {"unlabelled_dicom": 40, "png": 20}
    assert pool["counts"] == {"found": 100, "skipped": 0, "dropped": 40, "used": 60}
    assert all("duplicate of pool image unlabelled_dicom:" in d["problem"] for d in pool["dropped"])
    assert {Path(d["where"]).name for d in pool["dropped"]} == {p.name for p in copies}
    added = [it for it in out["training_unlabelled"] if "source" in it]
    assert len(added) == 60 and all(Path(it["image"]).is_file() for it in added)
    dicom = next(it["image"] for it in added if it["source"] == "unlabelled_dicom")
    assert read_image(dicom)[0].shape == (1024, 1024)  # a JPEG DICOM, decoded


def test_leak_check_drops_copies_of_labelled_images(labelled: dict, tmp_path: Path) -> None:
    """A pool image with the pixels of a labelled (here: test-split) image, in another container or resized,
    never enters training: dropped and counted, naming the labelled image it copies."""
    test_item = labelled["test"][0]
    image, _ = read_image(test_item["image"])
    pool = tmp_path / "archive"
    _save_png(image, pool / "exact.png")
    _save_png(image, pool / "nested" / "resized.png", size=96)
    _save_png(np.rot90(image).copy(), pool / "other.png")  # another picture
    out = with_pool(labelled, pool, seed=0)
    dropped = {Path(d["where"]).name: d["problem"] for d in out["pool"]["dropped"]}
    assert dropped["exact.png"] == f"same pixels as labelled image {test_item['id']}"
    assert dropped["resized.png"].startswith(f"near-duplicate of labelled image {test_item['id']}")
    assert [Path(it["image"]).name for it in out["training_unlabelled"]] == ["other.png"]
    assert pool_counts(out) == {
        "found": 3, "skipped": 0, "dropped": 2, "used": 1, "per_source": {"archive": 1}, "pool_size": "all",
    }  # fmt: skip


def test_bad_pool_file_is_an_error_naming_it_or_a_counted_skip(labelled: dict, tmp_path: Path) -> None:
    pool = tmp_path / "archive"
    _save_png(np.linspace(0, 1, 64 * 64).reshape(64, 64), pool / "good.png")
    (pool / "broken.dcm").write_bytes(b"not a dicom")
    with pytest.raises(DataValidationError) as error:
        with_pool(labelled, pool)
    assert str(error.value).splitlines()[-1].startswith(f"  - {pool / 'broken.dcm'}: ")
    out = with_pool(labelled, pool, skip_bad=True)
    assert out["pool"]["counts"]["skipped"] == 1 and out["pool"]["skipped"][0]["where"] == str(pool / "broken.dcm")
    assert [Path(it["image"]).name for it in out["training_unlabelled"]] == ["good.png"]


def test_pool_subsets_are_seeded_and_nested() -> None:
    items = [{"id": f"p:{i:03d}", "image": f"{i}.png", "source": "p"} for i in range(100)]
    small, large = seeded_subset(items, 10, seed=1), seeded_subset(items, 40, seed=1)
    assert len(small) == 10 and len(large) == 40
    assert {it["id"] for it in small} <= {it["id"] for it in large}
    assert seeded_subset(items, 10, seed=1) == small and seeded_subset(items, 10, seed=2) != small
    assert seeded_subset(items, None, seed=1) == sorted(items, key=lambda it: it["id"])


def test_aux_items_all_or_the_pool_alone(labelled: dict, tmp_path: Path) -> None:
    _save_png(np.eye(64), tmp_path / "archive" / "a.png")
    out = with_pool(labelled, tmp_path / "archive")
    everything = aux_items(out)
    assert len(everything) == len(out["training_labelled"]) + len(out["training_unlabelled"])
    assert all(set(it) == {"id", "image"} for it in everything)  # labels stripped: batches collate
    assert [it["id"] for it in aux_items(out, "pool")] == ["archive:a.png"]
    with pytest.raises(ValueError, match="no unlabelled pool: set unlabelled_dir"):
        aux_items(labelled, "pool")


def test_a_datalist_takes_one_pool(labelled: dict, tmp_path: Path) -> None:
    _save_png(np.eye(64), tmp_path / "archive" / "a.png")
    out = with_pool(labelled, tmp_path / "archive")
    with pytest.raises(ValueError, match="already holds an unlabelled pool"):
        with_pool(out, tmp_path / "archive")
    assert with_pool(labelled, "") is labelled  # no pool: unchanged


def test_pool_size_narrows_the_pool_a_datalist_holds(
    labelled: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A datalist with a pool (as the pipeline writes) and ``pool_size`` but no ``unlabelled_dir``: the bundle
    keeps a seeded, nested subset of that pool; the split's own unlabelled images stay; counts follow."""
    for i in range(6):
        _save_png(np.roll(np.eye(64), 9 * i, axis=1), tmp_path / "archive" / f"{i}.png")
    first, *rest = labelled["training_labelled"]
    own = {"id": first["id"], "image": first["image"]}  # an unlabelled image of the labelled split (no source)
    base = {**labelled, "training_labelled": rest, "training_unlabelled": [own], "counts": {"training_unlabelled": 1}}
    full = with_pool(base, tmp_path / "archive", seed=3)
    assert with_pool(full, None) is full and with_pool(full, None, "all") is full
    two, four = with_pool(full, None, 2), with_pool(full, "", pool_size=4)
    pooled = [{it["id"] for it in d["training_unlabelled"] if "source" in it} for d in (two, four)]
    assert len(pooled[0]) == 2 and len(pooled[1]) == 4 and pooled[0] <= pooled[1]
    assert own in two["training_unlabelled"] and own in four["training_unlabelled"]
    assert two["pool"]["counts"]["used"] == 2 and two["pool"]["used"] == {"archive": 2}
    assert two["pool"]["pool_size"] == 2 and two["pool"]["narrowed_from"] == 6
    assert two["counts"] == {"training_unlabelled": 3, "pool": 2}
    assert pool_counts(two)["used"] == 2
    assert with_pool(full, None, 0)["training_unlabelled"] == [own]
    assert with_pool(full, None, 2) == two  # seeded
    caplog.set_level("WARNING", logger="common.data.pool")
    assert len(with_pool(full, None, 50)["training_unlabelled"]) == 7
    assert "pool_size 50 but the datalist's pool has 6 images" in caplog.text
    with pytest.raises(ValueError, match="pool_size must be 'all' or a whole number"):
        with_pool(full, None, -1)


def test_prepare_siim_adds_the_pool_and_lists_its_skips(
    tiny_siim: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pool = tmp_path / "archive"
    for i in range(3):
        _save_png(np.roll(np.eye(64), 5 * i, axis=1), pool / f"{i}.png")
    (pool / "bad.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "datalist.json"
    argv = ["--siim-dir", str(tiny_siim), "--out", str(out), "--unlabelled-dir", str(pool), "--no-verify"]
    assert prepare_siim(argv) == 2
    assert f"{pool / 'bad.png'}: unreadable image" in capsys.readouterr().err.splitlines()[-1]
    assert prepare_siim([*argv, "--skip-bad", "--pool-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "unlabelled pool: 2 image(s) used (archive=2) of 4 found, 0 dropped" in printed
    datalist = json.loads(out.read_text())
    assert datalist["counts"]["pool"] == 2 and len([i for i in datalist["training_unlabelled"] if "source" in i]) == 2
    skipped = json.loads(out.with_name("datalist.skipped.json").read_text())
    assert skipped["count"] == 1 and skipped["skipped"][0]["where"] == str(pool / "bad.png")


def test_bundle_unlabelled_dir_feeds_the_auxiliary_loader(tiny_siim: Path, tmp_path: Path) -> None:
    """``unlabelled_dir`` in a joint bundle: the pool joins what the auxiliary tasks read; ``aux_images=pool``
    leaves only the pool; the settings are checked by name."""
    pool = tmp_path / "archive"
    for i in range(5):
        _save_png(np.roll(np.eye(64), 7 * i, axis=0), pool / f"{i}.png")
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "rotation_joint" / "configs" / "train.json"))
    parser.update({"dataset_dir": str(tiny_siim), "cache_dir": str(tmp_path / "cache"), "unlabelled_dir": str(pool)})
    datalist = parser.get_parsed_content("datalist")
    aux = parser.get_parsed_content("aux#dataset#data")
    assert len(aux) == len(datalist["training_labelled"]) + len(datalist["training_unlabelled"])
    assert sum(it["id"].startswith("archive:") for it in aux) == 5
    parser["aux_images"] = "pool"
    assert len(ConfigParser(parser.get()).get_parsed_content("aux#dataset#data")) == 5
    from common.utils.settings import check_settings

    with pytest.raises(SystemExit, match=r"--unlabelled_dir .*folder not found"):
        check_settings(unlabelled_dir=str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match=r"--pool_size -1: must be a whole number >= 0"):
        check_settings(pool_size=-1)
    with pytest.raises(SystemExit, match=r"--aux_images 'both': must be one of all, pool"):
        check_settings(aux_images="both")
