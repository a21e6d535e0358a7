"""Stratified k-fold datalists: every image tested once, balanced folds, labelled subsets by count."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data.datalist import SPLIT_KEYS, fold_items, scan_siim, split_items

REAL_SIIM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "siim_real" / "labelled"


def _items(n: int = 53, every: int = 4) -> list[dict]:
    """``n`` items, every ``every``-th positive, listed in reverse id order (the split must not care)."""
    return [{"id": f"img{i:03d}", "image": f"{i}.dcm", "positive": i % every == 0} for i in reversed(range(n))]


def _ids(items: list[dict]) -> set[str]:
    return {it["id"] for it in items}


def _all_ids(splits: dict[str, list[dict]]) -> list[str]:
    return [it["id"] for key in SPLIT_KEYS for it in splits[key]]


def test_every_image_is_tested_exactly_once_over_the_folds() -> None:
    items = _items()
    folds = [fold_items(items, 5, k, seed=0) for k in range(5)]
    tested = [it["id"] for f in folds for it in f["test"]]
    assert sorted(tested) == sorted(_ids(items)) and len(tested) == len(items)
    sizes = [len(f["test"]) for f in folds]
    positives = [sum(it["positive"] for it in f["test"]) for f in folds]
    assert max(sizes) - min(sizes) <= 1 and max(positives) - min(positives) <= 1
    assert sum(positives) == sum(it["positive"] for it in items)


def test_splits_are_disjoint_cover_everything_and_sorted() -> None:
    items = _items()
    for k in range(4):
        splits = fold_items(items, 4, k, seed=3, labelled_fraction=0.5)
        ids = _all_ids(splits)
        assert len(ids) == len(set(ids)) == len(items) and set(ids) == _ids(items)
        for key in SPLIT_KEYS:
            assert [it["id"] for it in splits[key]] == sorted(it["id"] for it in splits[key])
        assert all(set(it) == {"id", "image"} for it in splits["training_unlabelled"])  # no label leaks
        rest = len(items) - len(splits["test"])
        assert abs(len(splits["validation"]) - 0.2 * rest) <= 1  # rounded per stratum
        assert any(it["positive"] for it in splits["validation"])


def test_same_seed_same_folds_other_seed_other_folds() -> None:
    items = _items()
    assert fold_items(items, 5, 2, seed=1) == fold_items(list(reversed(items)), 5, 2, seed=1)
    assert fold_items(items, 5, 2, seed=1)["test"] != fold_items(items, 5, 2, seed=2)["test"]


def test_labelled_fraction_subsets_are_nested_and_keep_the_fold() -> None:
    items = _items(200, every=3)
    small, large = fold_items(items, 5, 1, 0, labelled_fraction=0.1), fold_items(items, 5, 1, 0, labelled_fraction=0.5)
    assert small["validation"] == large["validation"] and small["test"] == large["test"]
    assert _ids(small["training_labelled"]) < _ids(large["training_labelled"])


@pytest.mark.parametrize("split", ["folds", "split"])
def test_labelled_count_is_exact_stratified_and_nested(split: str) -> None:
    items = _items(120, every=4)  # a quarter positive

    def labelled(n: int) -> list[dict]:
        if split == "folds":
            return fold_items(items, 5, 0, seed=4, labelled_count=n)["training_labelled"]
        return split_items(items, 1.0, seed=4, labelled_count=n)["training_labelled"]

    previous: set[str] = set()
    for n in range(1, 40):
        chosen = labelled(n)
        positives = sum(it["positive"] for it in chosen)
        assert len(chosen) == n and previous <= _ids(chosen)
        if n >= 2:
            assert positives >= 1
        assert abs(positives - n / 4) <= 1  # proportional (the training set keeps the quarter, within rounding)
        previous = _ids(chosen)


def test_labelled_count_takes_a_positive_even_when_rare() -> None:
    items = _items(100, every=25)  # 4 positives
    chosen = fold_items(items, 2, 0, seed=0, labelled_count=2)["training_labelled"]
    assert len(chosen) == 2 and sum(it["positive"] for it in chosen) == 1


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"folds": 1, "fold": 0}, "folds"),
        ({"folds": 100, "fold": 0}, "folds"),
        ({"folds": 5, "fold": 5}, "fold"),
        ({"folds": 5, "fold": -1}, "fold"),
        ({"folds": 5, "fold": 0, "labelled_count": 0}, "labelled_count"),
        ({"folds": 5, "fold": 0, "labelled_count": 1000}, "labelled_count"),
        ({"folds": 5, "fold": 0, "labelled_fraction": 0.0}, "labelled_fraction"),
        ({"folds": 5, "fold": 0, "val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_bad_arguments_name_the_option(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=rf"^{option} must"):
        fold_items(_items(), seed=0, **kwargs)


def test_split_items_checks_labelled_count() -> None:
    with pytest.raises(ValueError, match=r"^labelled_count must be between 1 and"):
        split_items(_items(), 1.0, seed=0, labelled_count=10_000)


@pytest.mark.realdata
def test_five_folds_of_the_real_siim_set_test_each_image_once() -> None:
    if not REAL_SIIM.is_dir():
        pytest.skip(f"real data not available: {REAL_SIIM} is absent (it ships beside the repository, not in it)")
    scan = scan_siim(REAL_SIIM)  # ``positive`` from train-rle.csv: no image is decoded
    assert not scan.problems and len(scan.items) == 86
    folds = [fold_items(scan.items, 5, k, seed=0) for k in range(5)]
    tested = sorted(it["id"] for f in folds for it in f["test"])
    assert tested == sorted(_ids(scan.items))
    positives = [sum(it["positive"] for it in f["test"]) for f in folds]
    assert max(positives) - min(positives) <= 1 and sum(positives) == sum(it["positive"] for it in scan.items)
