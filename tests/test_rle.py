"""SIIM-ACR run-length encoding: hand cases, exact inverses on the real CSV, unions, orientation."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from common.data.imaging import read_image
from common.data.rle import RLEError, decode_rle, decode_union, encode_rle
from tests.conftest import shared_path


def test_decode_is_relative_and_column_major() -> None:
    # runs: pixels 1-2, then (2 after the end of the first run) pixel 5; column-major in a 3x3 mask
    mask = decode_rle("1 2 2 1", 3, 3)
    flat_f = mask.reshape(-1, order="F")
    assert flat_f.tolist() == [0, 1, 1, 0, 0, 1, 0, 0, 0]
    assert mask[1, 0] == 1 and mask[2, 0] == 1 and mask[2, 1] == 1  # down the first column first
    assert encode_rle(mask) == "1 2 2 1"


def test_empty_mask_is_minus_one() -> None:
    assert encode_rle(np.zeros((4, 5), np.uint8)) == "-1"
    assert not decode_rle(" -1", 4, 5).any()


def test_random_masks_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = (rng.random((17, 23)) > 0.6).astype(np.uint8)
        assert np.array_equal(decode_rle(encode_rle(mask), 17, 23), mask)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number of tokens"),
        ("1 x", "non-integer"),
        ("5 100", "past the end"),
        ("1 -2", "negative"),
        ("", "empty run-length"),
        ("0 0", "zero-length"),
    ],
)
def test_malformed_rle_is_rejected(rle: str, message: str) -> None:
    with pytest.raises(RLEError, match=message):
        decode_rle(rle, 8, 8)


def test_union_of_rows() -> None:
    a, b = np.zeros((6, 6), np.uint8), np.zeros((6, 6), np.uint8)
    a[1:3, 1:3], b[2:5, 2:4] = 1, 1
    assert np.array_equal(decode_union([encode_rle(a), encode_rle(b)], 6, 6), a | b)


def _real_rows() -> list[tuple[str, str]]:
    with open(shared_path("siim_sample", "train-rle.csv"), newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        assert header == ["ImageId", " EncodedPixels"]  # the competition's leading space
        return [(r[0], r[1].strip()) for r in reader]


@pytest.mark.realdata
def test_every_real_positive_row_round_trips() -> None:
    positives = [(i, r) for i, r in _real_rows() if r != "-1"]
    assert len(positives) == 3576
    for image_id, rle in positives:
        assert encode_rle(decode_rle(rle, 1024, 1024)) == rle, image_id


@pytest.mark.realdata
def test_real_multi_row_images_decode_to_the_union() -> None:
    by_image: dict[str, list[str]] = {}
    for image_id, rle in _real_rows():
        if rle != "-1":
            by_image.setdefault(image_id, []).append(rle)
    multi = {k: v for k, v in by_image.items() if len(v) > 1}
    assert len(by_image) == 2669 and max(len(v) for v in multi.values()) == 10
    for rles in list(multi.values())[:50]:
        union = decode_union(rles, 1024, 1024)
        parts = [decode_rle(r, 1024, 1024) for r in rles]
        assert np.array_equal(union, np.bitwise_or.reduce(parts))
        assert union.sum() >= max(p.sum() for p in parts)


@pytest.mark.realdata
def test_real_masks_sit_on_the_real_images_lungs() -> None:
    """Decoded in our orientation, real pneumothoraces lie where an upright PA film has lungs.

    The summed mask of all positive rows must be top-heavy (apices) and avoid the central
    mediastinum column, and the real SIIM image must be darker (air) under it than overall:
    a transposed decoding would put the mass in the left half instead.
    """
    heat = np.zeros((1024, 1024), np.float64)
    for _, rle in _real_rows():
        if rle != "-1":
            heat += decode_rle(rle, 1024, 1024)
    heat /= heat.sum()
    # measured: top/bottom 2.87 and left/right 1.55; the transposed decoding swaps the two
    assert heat[:512].sum() > 2.0 * heat[512:].sum()  # apical, as pneumothoraces are
    assert 0.5 < heat[:, :512].sum() / heat[:, 512:].sum() < 2.0  # both lungs, no side dominates
    centre = heat[:, 448:576].sum() / 128
    lateral = (heat[:, 128:256].sum() + heat[:, 768:896].sum()) / 256
    assert lateral > 1.3 * centre  # the mediastinum column between the lungs is spared
    dcm = next(shared_path("siim_sample", "dicom-images-train").rglob("*.dcm"))
    image, _meta = read_image(dcm)
    assert image.shape == (1024, 1024)
    under_masks = float((image * heat).sum())  # measured 0.583 vs mean 0.629, transposed 0.648
    assert under_masks < float(image.mean()) - 0.02
    assert under_masks < float((image * heat.T).sum())
