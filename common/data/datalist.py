"""Datalists: scan a SIIM-ACR download or a plain image/mask folder, validate it, split it.

A datalist is a MONAI-style JSON with the keys ``training_labelled``, ``training_unlabelled``,
``validation`` and ``test``. Items hold ``id``, ``image`` (a path relative to the dataset
folder), either ``label`` (a mask file) or ``rle`` (the SIIM run-length rows of the image), and
``positive`` (the mask has any foreground: from the CSV for SIIM, from the mask file for folders),
which the split is stratified by; unlabelled items carry no label at all. Bad input is collected
as :class:`Problem` records: by default the build fails naming every problem; with ``skip_bad``
the bad items are left out and returned, to be counted and reported by the caller.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data.imaging import (
    IMAGE_SUFFIXES,
    ImageReadError,
    image_format,
    pil_values,
    read_image,
    read_mask,
    stem,
)
from common.data.rle import RLEError, decode_rle, is_empty_rle, parse_rle
from common.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

SIIM_CSV = "train-rle.csv"
SIIM_IMAGE_DIR = "dicom-images-train"
SPLIT_KEYS = ("training_labelled", "training_unlabelled", "validation", "test")
DEFAULT_SPLIT = (0.70, 0.15, 0.15)
FOLDER_IMAGE_DIR, FOLDER_MASK_DIR = "images", "masks"
MAX_SHOWN = 20  # problems an error message lists (``problems`` / the skipped report hold all)
SKIP_HINT = "fix the files, or pass --skip-bad to skip and report them"


@dataclass(frozen=True)
class Problem:
    """One piece of bad input: where it is (a file or a CSV line) and what is wrong."""

    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


class DataValidationError(ValueError):
    """The dataset has bad items; the message lists them (all of them in ``problems``).

    The count and the ``hint`` (what to do) come first, the problems last: the last line of the message
    is always a problem, naming its file or CSV line.
    """

    def __init__(self, problems: Sequence[Problem], hint: str = "") -> None:
        self.problems = list(problems)
        first = f", the first {MAX_SHOWN} below" if len(self.problems) > MAX_SHOWN else ""
        shown = "\n".join(f"  - {p}" for p in self.problems[:MAX_SHOWN])
        hint = f"; {hint}" if hint else ""
        super().__init__(f"{len(self.problems)} bad input item(s){first}{hint}:\n{shown}")


@dataclass
class ScanResult:
    """Items that passed the checks, the problems found, and where the paths are relative to."""

    base_dir: Path
    source: str
    items: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rle_where: dict[str, list[str]] = field(default_factory=dict)  # SIIM: the CSV line of each item's RLE


# ----------------------------------------------------------------------------- SIIM-ACR


def read_rle_csv(csv_path: str | Path) -> tuple[dict[str, list[tuple[int, str]]], list[Problem], set[str]]:
    """Read ``train-rle.csv`` into {ImageId: [(line, rle), ...]}, the problems and the ImageIds they affect.

    Lines are 1-based file lines (the header is line 1), as an editor shows them. The header may spell
    ``EncodedPixels`` with or without the competition's leading space; a UTF-8 byte-order mark (Excel's
    "CSV UTF-8"), blank lines and empty trailing cells are accepted. An image with a bad row is bad as a
    whole (its mask is the union of all its rows): a malformed row, or ``-1`` beside a run-length mask.
    """
    rows: dict[str, list[tuple[int, str]]] = {}
    bad_rows: list[tuple[str | None, str, str]] = []  # (ImageId when known, where, what is wrong)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            table = list(csv.reader(f))
    except UnicodeDecodeError as e:
        problem = "not UTF-8 text: save the CSV as UTF-8 (Excel: 'CSV UTF-8')"
        raise DataValidationError([Problem(f"{csv_path} byte {e.start}", problem)]) from None
    header = [h.strip() for h in (table[0] if table else [])]
    if header != ["ImageId", "EncodedPixels"]:
        problem = f"unexpected header {header}, expected 'ImageId, EncodedPixels'"
        raise DataValidationError([Problem(f"{csv_path} line 1", problem)])
    for line, row in enumerate(table[1:], start=2):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue  # a blank line holds no data
        while len(cells) > 2 and not cells[-1]:
            cells.pop()  # nor do empty cells after the two columns (spreadsheets add them)
        image_id = cells[0] or None
        where = f"{csv_path} line {line}" + (f" (ImageId {image_id})" if image_id else "")
        if len(cells) != 2 or image_id is None:
            bad_rows.append((image_id, where, f"expected 'ImageId, EncodedPixels', got {row!r}"))
            continue
        rle = cells[1]
        if not is_empty_rle(rle):
            try:
                parse_rle(rle)
            except RLEError as e:
                bad_rows.append((image_id, where, f"malformed RLE: {e}"))
                continue
        rows.setdefault(image_id, []).append((line, rle))
    problems, bad_ids = [], {image_id for image_id, _, _ in bad_rows if image_id}
    for image_id, where, problem in bad_rows:
        if image_id in rows:  # the union of the rows left would be an incomplete mask
            problem += f" (the image is left out with its other row(s): line {_lines(rows[image_id])})"
        problems.append(Problem(where, problem))
    for image_id, entries in rows.items():
        empty = [entry for entry in entries if is_empty_rle(entry[1])]
        masks = [entry for entry in entries if not is_empty_rle(entry[1])]
        if empty and masks:
            problem = f"conflicting rows: '-1' (no mask) on line {_lines(empty)}, a mask on line {_lines(masks)}"
            problems.append(Problem(f"{csv_path} lines {_lines(entries)} (ImageId {image_id})", problem))
            bad_ids.add(image_id)
    return rows, problems, bad_ids


def _lines(entries: list[tuple[int, str]]) -> str:
    """The line numbers of CSV rows, comma-separated."""
    return ", ".join(str(line) for line, _ in entries)


def scan_siim(siim_dir: str | Path) -> ScanResult:
    """Pair every DICOM under ``dicom-images-train`` with its ``train-rle.csv`` rows (no pixel decoding)."""
    siim_dir = Path(siim_dir)
    csv_path = siim_dir / SIIM_CSV
    image_root = siim_dir / SIIM_IMAGE_DIR
    if not csv_path.is_file() or not image_root.is_dir():
        raise FileNotFoundError(
            f"{siim_dir} is not a SIIM-ACR folder: expected {SIIM_CSV} and {SIIM_IMAGE_DIR}/ inside it"
        )
    result = ScanResult(base_dir=siim_dir, source="siim-acr")
    rows, result.problems, bad_ids = read_rle_csv(csv_path)
    files: dict[str, Path] = {}
    dicoms, broken = find_image_files(image_root, (".dcm",), result.problems)
    for path in dicoms:
        image_id = path.stem  # the competition names every file <SOPInstanceUID>.dcm
        if image_id in files:
            result.problems.append(Problem(str(path), f"duplicate ImageId (also {files[image_id]})"))
            continue
        files[image_id] = path
    for image_id, path in files.items():
        if image_id in bad_ids:
            continue  # its bad row is already reported
        if image_id not in rows:
            result.problems.append(Problem(str(path), f"image has no row in {SIIM_CSV}"))
            continue
        positives = [(line, r) for line, r in rows[image_id] if not is_empty_rle(r)]  # the mask is their union
        result.items.append(
            {
                "id": image_id,
                "image": path.relative_to(siim_dir).as_posix(),
                "rle": [r for _, r in positives],
                "positive": bool(positives),
            }
        )
        result.rle_where[image_id] = [f"{csv_path} line {line} (ImageId {image_id})" for line, _ in positives]
    reported = bad_ids | broken
    for image_id, entries in rows.items():
        if image_id not in files and image_id not in reported:
            line = entries[0][0]
            result.problems.append(
                Problem(f"{csv_path} line {line} (ImageId {image_id})", f"image not found under {image_root}")
            )
    return result


# ----------------------------------------------------------------------------- image/mask folders


def find_image_files(folder: Path, suffixes: Sequence[str], problems: list[Problem]) -> tuple[list[Path], set[str]]:
    """Files under ``folder`` named with one of ``suffixes`` (sorted, as paths under ``folder``), and the
    stems of links to missing files: those are added to ``problems`` (not silently left out).

    Symbolic links are followed, to files and to folders (each real folder is walked once), but the
    paths keep the link names: a datalist names what the user put in the folder.
    """
    found, seen, broken = [], set(), set()

    def unreadable(error: OSError) -> None:
        problems.append(Problem(str(error.filename), f"folder cannot be read ({error.strerror})"))

    for root, dirs, names in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree, or two links to one folder
            dirs.clear()
            continue
        seen.add(real)
        for name in names:
            if not name.lower().endswith(tuple(suffixes)):
                continue
            path = Path(root) / name
            if path.is_file():
                found.append(path)
            elif path.is_symlink():
                problems.append(Problem(str(path), f"broken symbolic link (its target {os.readlink(path)} is missing)"))
                broken.add(stem(path))
    return sorted(found), broken


def scan_folder(image_dir: str | Path, mask_dir: str | Path) -> ScanResult:
    """Pair images with masks of the same file stem (any supported format on either side).

    No pixel is read here: :func:`build_datalist` reads the masks (verifying, or alone) for ``positive``.
    Paths are relative to the folder holding both, without resolving symbolic links (images and masks
    may be links to files anywhere).
    """
    image_dir, mask_dir = Path(os.path.abspath(image_dir)), Path(os.path.abspath(mask_dir))
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: folder not found")
    base = Path(os.path.commonpath([image_dir, mask_dir]))
    result = ScanResult(base_dir=base, source="folder")
    masks: dict[str, Path] = {}
    mask_files, broken = find_image_files(mask_dir, IMAGE_SUFFIXES, result.problems)
    image_files, broken_images = find_image_files(image_dir, IMAGE_SUFFIXES, result.problems)
    broken |= broken_images  # already reported: their partners are not orphans
    for path in mask_files:
        if stem(path) in masks:
            result.problems.append(Problem(str(path), f"two masks for one image (also {masks[stem(path)]})"))
        masks[stem(path)] = path
    seen: dict[str, Path] = {}
    for path in image_files:
        key = stem(path)
        if key in seen:
            result.problems.append(Problem(str(path), f"two images with the stem '{key}' (also {seen[key]})"))
            continue
        seen[key] = path
        if key not in masks:
            if key not in broken:
                result.problems.append(Problem(str(path), f"no mask named '{key}.*' in {mask_dir}"))
            continue
        result.items.append(
            {
                "id": key,
                "image": path.relative_to(base).as_posix(),
                "label": masks[key].relative_to(base).as_posix(),
            }
        )
    for key, path in masks.items():
        if key not in seen and key not in broken:
            result.problems.append(Problem(str(path), f"mask without an image named '{key}.*' in {image_dir}"))
    return result


# ----------------------------------------------------------------------------- pixel verification


def mask_is_positive(path: str | Path) -> bool:
    """Whether ``read_mask(path)`` has any foreground, without building the mask when PIL can tell.

    ``read_mask`` marks the pixels above half the file's maximum, so a mask has foreground exactly
    when that maximum is above zero: for PNG/JPEG this reads the maximum of the same values
    (:func:`~common.data.imaging.pil_values`, about 3x cheaper than the full mask); other formats go
    through ``read_mask`` itself.
    """
    path = Path(path)
    if image_format(path) != "pil" or not path.is_file():
        return bool(read_mask(path).any())  # NIfTI & co., and read_mask's own "not found" message
    from PIL import Image

    try:
        with Image.open(path) as im:
            peak = pil_values(im).getextrema()[1]
    except Exception as e:
        raise ImageReadError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e
    return bool(peak > 0)


def _problem(error: ImageReadError) -> Problem:
    where, _, what = str(error).partition(": ")
    return Problem(where, what)


def verify_item(
    item: dict[str, Any], base_dir: str | Path, rle_where: Sequence[str] = ()
) -> tuple[Problem | None, bool | None]:
    """Decode an item's image and mask: (the problem if either is unreadable or they disagree, positive).

    ``positive`` is whether a mask file has any foreground (None for RLE items: theirs comes from the CSV).
    ``rle_where`` names the CSV line of each of ``item["rle"]`` (:attr:`ScanResult.rle_where`).
    """
    image_path = Path(base_dir) / item["image"]
    try:
        image, _ = read_image(image_path)
        height, width = image.shape
        for k, rle in enumerate(item.get("rle", [])):
            try:
                decode_rle(rle, height, width)
            except RLEError as e:
                where = rle_where[k] if k < len(rle_where) else f"{SIIM_CSV} (ImageId {item['id']})"
                return Problem(where, str(e)), None
        if "label" in item:
            mask = read_mask(Path(base_dir) / item["label"])
            if mask.shape != image.shape:
                return Problem(
                    str(Path(base_dir) / item["label"]),
                    f"mask size {mask.shape[0]}x{mask.shape[1]} does not match image {image_path.name} "
                    f"({height}x{width})",
                ), None
            return None, bool(mask.any())
    except ImageReadError as e:
        return _problem(e), None
    return None, None


def mask_item(
    item: dict[str, Any], base_dir: str | Path, rle_where: Sequence[str] = ()
) -> tuple[Problem | None, bool | None]:
    """Read only an item's mask file: (the problem if it is unreadable, whether it has any foreground).

    ``rle_where`` is unused (mask files have no CSV lines): the signature of :func:`verify_item`."""
    try:
        return None, mask_is_positive(Path(base_dir) / item["label"])
    except ImageReadError as e:
        return _problem(e), None


def _check_items(check: Any, result: ScanResult, items: list[dict[str, Any]], workers: int) -> None:
    """Run ``check(item, base_dir, rle_where)`` over ``items`` of ``result`` (in ``workers`` processes when
    > 1): record each ``positive`` it returns on its item, move the failed items to ``result.problems``."""
    bases = [str(result.base_dir)] * len(items)
    wheres = [result.rle_where.get(item["id"], ()) for item in items]
    if workers > 1 and len(items) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            chunk = max(1, len(items) // (workers * 8))
            outcome = list(pool.map(check, items, bases, wheres, chunksize=chunk))
    else:
        outcome = [check(*args) for args in zip(items, bases, wheres, strict=True)]
    failed = set()
    for item, (problem, positive) in zip(items, outcome, strict=True):
        if problem is not None:
            result.problems.append(problem)
            failed.add(id(item))
        elif positive is not None:
            item["positive"] = positive
    result.items = [item for item in result.items if id(item) not in failed]


def verify_items(result: ScanResult, workers: int = 1) -> None:
    """Decode every item of ``result`` once: items that fail move to ``result.problems``; mask files
    give their items ``positive`` (any foreground), which the split is stratified by."""
    _check_items(verify_item, result, result.items, workers)


def read_mask_flags(result: ScanResult, workers: int = 1) -> None:
    """Without verification: read only the mask files of items that lack ``positive`` and record it.

    SIIM items know it from the CSV and are left alone; unreadable masks move to ``result.problems``.
    """
    todo = [item for item in result.items if "label" in item and "positive" not in item]
    _check_items(mask_item, result, todo, workers)


# ----------------------------------------------------------------------------- splitting


def _round_count(n: int, fraction: float) -> int:
    return int(np.floor(n * fraction + 0.5))


def image_items(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The items without any label: what unlabelled splits and auxiliary tasks get."""
    return [{"id": it["id"], "image": it["image"]} for it in items]


def training_counts(
    train_items: Sequence[dict[str, Any]], validation_items: Sequence[dict[str, Any]]
) -> dict[str, int]:
    """Labelled and unlabelled training items and validation items, from what the loaders actually get
    (MONAI Label replaces ``train#dataset#data``/``validate#dataset#data``, not the datalist)."""
    labelled = sum(1 for it in train_items if "label" in it or "rle" in it)
    return {
        "training_labelled": labelled,
        "training_unlabelled": len(train_items) - labelled,
        "validation": len(validation_items),
    }


def distillation_items(datalist: dict[str, list[dict[str, Any]]], use_unlabelled: bool = True) -> list[dict[str, Any]]:
    """Labelled training items (id, image and their label source) plus, optionally, the unlabelled ones.

    Only the keys the loader needs are kept, so labelled and unlabelled items collate in one batch
    (``common.data.transforms.MarkLabelledd`` then flags them and fills the missing labels).
    """
    keep = ("id", "image", "label", "rle")
    labelled = [{k: it[k] for k in keep if k in it} for it in datalist["training_labelled"]]
    return labelled + (image_items(datalist["training_unlabelled"]) if use_unlabelled else [])


def _strata(items: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The items sorted by id and grouped by ``positive`` (absent: one group), groups in ``repr`` order."""
    strata: dict[Any, list[dict[str, Any]]] = {}
    for it in sorted(items, key=lambda it: it["id"]):
        strata.setdefault(it.get("positive"), []).append(it)
    return [strata[key] for key in sorted(strata, key=repr)]


def _check_fraction(labelled_fraction: float) -> None:
    if not 0.0 < labelled_fraction <= 1.0:
        raise ValueError(f"labelled_fraction must be in (0, 1], got {labelled_fraction}")


def _stratified_ranking(ranked: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One ranking of every stratum's (already ranked) items whose first N are stratified for every N.

    Each next item comes from the stratum furthest below its proportional share of the N so far (largest
    remainder, one image at a time, so N images are among N+1); when positives exist, one is among the
    first two.
    """
    total = sum(len(group) for group in ranked)
    taken = [0] * len(ranked)
    order: list[dict[str, Any]] = []
    for n in range(1, total + 1):  # deficits scaled by ``total``: integers, no rounding ties
        k = max(range(len(ranked)), key=lambda i: (n * len(ranked[i]) - taken[i] * total, len(ranked[i]), -i))
        order.append(ranked[k][taken[k]])
        taken[k] += 1
    first_positive = next((i for i, it in enumerate(order) if it.get("positive") is True), None)
    if first_positive is not None and first_positive > 1:
        order.insert(1, order.pop(first_positive))
    return order


def _labelled_ids(
    ranked: Sequence[Sequence[dict[str, Any]]], labelled_fraction: float, labelled_count: int | None
) -> set[str]:
    """The labelled training images from each stratum's seeded ranking: ``labelled_fraction`` of every
    stratum (at least one image), or exactly ``labelled_count`` images, stratified. Both nest."""
    train = [it for group in ranked for it in group]
    if labelled_count is not None:
        if isinstance(labelled_count, bool) or not isinstance(labelled_count, int | np.integer):
            raise ValueError(f"labelled_count must be a whole number, got {labelled_count!r}")
        if not 1 <= labelled_count <= len(train):
            raise ValueError(
                f"labelled_count must be between 1 and {len(train)} (the training images), got {labelled_count}"
            )
        return {it["id"] for it in _stratified_ranking(ranked)[:labelled_count]}
    ids = {it["id"] for group in ranked for it in group[: _round_count(len(group), labelled_fraction)]}
    if train and not ids:
        ids = {min(it["id"] for it in train)}
    return ids


def _splits(
    train: list[dict[str, Any]], val: list[dict[str, Any]], test: list[dict[str, Any]], labelled_ids: set[str]
) -> dict[str, list[dict[str, Any]]]:
    """The four datalist splits, each sorted by id (unlabelled items without their labels)."""
    by_id = sorted(train, key=lambda it: it["id"])
    return {
        "training_labelled": [it for it in by_id if it["id"] in labelled_ids],
        "training_unlabelled": image_items([it for it in by_id if it["id"] not in labelled_ids]),
        "validation": sorted(val, key=lambda it: it["id"]),
        "test": sorted(test, key=lambda it: it["id"]),
    }


def split_items(
    items: Sequence[dict[str, Any]],
    labelled_fraction: float,
    seed: int,
    fractions: Sequence[float] = DEFAULT_SPLIT,
    labelled_count: int | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Seeded train/validation/test split, then a seeded labelled subset of the training images.

    Stratified by ``positive`` when items carry it. The split depends only on the item ids and
    the seed (not on the file listing order or the labelled fraction), and labelled subsets are
    nested: the images labelled at fraction 0.1 are among those labelled at 0.2. ``labelled_count``
    (instead of the fraction): exactly that many labelled images, stratified, nested likewise.
    """
    _check_fraction(labelled_fraction)
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three numbers summing to 1, got {fractions}")
    split_rng = np.random.default_rng([seed, 0])
    label_rng = np.random.default_rng([seed, 1])
    train, val, test, ranked = [], [], [], []
    for group in _strata(items):
        order = split_rng.permutation(len(group))
        n_val, n_test = _round_count(len(group), fractions[1]), _round_count(len(group), fractions[2])
        val += [group[i] for i in order[:n_val]]
        test += [group[i] for i in order[n_val : n_val + n_test]]
        group_train = [group[i] for i in order[n_val + n_test :]]
        train += group_train
        ranked.append([group_train[i] for i in label_rng.permutation(len(group_train))])
    return _splits(train, val, test, _labelled_ids(ranked, labelled_fraction, labelled_count))


def _check_folds(folds: int, fold: int, n_items: int) -> None:
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
        raise ValueError(f"folds must be a whole number of at least 2, got {folds!r}")
    if folds > n_items:
        raise ValueError(f"folds must be at most the number of images ({n_items}), got {folds}")
    if isinstance(fold, bool) or not isinstance(fold, int | np.integer) or not 0 <= fold < folds:
        raise ValueError(f"fold must be a whole number in 0..{folds - 1} (folds={folds}), got {fold!r}")


def fold_assignment(items: Sequence[dict[str, Any]], folds: int, seed: int) -> list[list[tuple[dict[str, Any], int]]]:
    """Per stratum (``positive``), its items in a seeded order with their fold: round-robin with one counter
    across the strata, so fold sizes, and positives per fold, differ by at most one."""
    rng = np.random.default_rng([seed, 2])
    assigned, counter = [], 0
    for group in _strata(items):
        order = rng.permutation(len(group))
        assigned.append([(group[i], (counter + j) % folds) for j, i in enumerate(order)])
        counter += len(group)
    return assigned


def fold_items(
    items: Sequence[dict[str, Any]],
    folds: int,
    fold: int,
    seed: int,
    labelled_fraction: float = 1.0,
    labelled_count: int | None = None,
    val_fraction: float = 0.2,
) -> dict[str, list[dict[str, Any]]]:
    """Stratified k-fold split: fold ``fold`` is the test set; of the rest, ``val_fraction`` of each stratum
    validates and the remainder trains, with a labelled subset like :func:`split_items` (a fraction per
    stratum, or exactly ``labelled_count`` images; nested either way). Over ``range(folds)`` every image is
    tested exactly once for a given ``seed``; the splits depend only on the item ids, ``folds`` and ``seed``.
    """
    _check_folds(folds, fold, len(items))
    _check_fraction(labelled_fraction)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    val_rng = np.random.default_rng([seed, 3, fold])
    label_rng = np.random.default_rng([seed, 1])
    train, val, test, ranked = [], [], [], []
    for group in fold_assignment(items, folds, seed):
        test += [it for it, k in group if k == fold]
        rest = [it for it, k in group if k != fold]
        order = val_rng.permutation(len(rest))
        n_val = _round_count(len(rest), val_fraction)
        val += [rest[i] for i in order[:n_val]]
        group_train = sorted((rest[i] for i in order[n_val:]), key=lambda it: it["id"])
        train += group_train
        ranked.append([group_train[i] for i in label_rng.permutation(len(group_train))])
    return _splits(train, val, test, _labelled_ids(ranked, labelled_fraction, labelled_count))


# ----------------------------------------------------------------------------- whole datalists


def scan_dataset(dataset_dir: str | Path) -> ScanResult:
    """Scan a SIIM-ACR folder (``train-rle.csv``) or a folder with ``images/`` and ``masks/``."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(
            f"dataset_dir {dataset_dir} does not exist (run `make demo-data` or pass --dataset_dir)"
        )
    if (dataset_dir / SIIM_CSV).is_file():
        return scan_siim(dataset_dir)
    if (dataset_dir / FOLDER_IMAGE_DIR).is_dir() and (dataset_dir / FOLDER_MASK_DIR).is_dir():
        return scan_folder(dataset_dir / FOLDER_IMAGE_DIR, dataset_dir / FOLDER_MASK_DIR)
    raise FileNotFoundError(
        f"{dataset_dir}: neither a SIIM-ACR folder ({SIIM_CSV} + {SIIM_IMAGE_DIR}/) "
        f"nor an image folder ({FOLDER_IMAGE_DIR}/ + {FOLDER_MASK_DIR}/)"
    )


def build_datalist(
    scan: ScanResult,
    labelled_fraction: float,
    seed: int,
    skip_bad: bool = False,
    verify: bool = True,
    workers: int = 1,
    folds: int | None = None,
    fold: int = 0,
    labelled_count: int | None = None,
) -> dict[str, Any]:
    """Verify (optionally) and split a scan into a datalist dict; raise on problems unless ``skip_bad``.

    Mask files are read either way (decoded with their images when verifying, alone otherwise) to
    record ``positive``, so folder splits are stratified like SIIM ones. The split is
    :func:`split_items` (70/15/15), or with ``folds`` fold ``fold`` of :func:`fold_items`;
    ``labelled_count`` labels exactly that many training images instead of ``labelled_fraction``.
    """
    if verify:
        verify_items(scan, workers=workers)
    else:
        read_mask_flags(scan, workers=workers)
    if scan.problems and not skip_bad:
        raise DataValidationError(scan.problems, hint=SKIP_HINT)
    for p in scan.problems:
        logger.warning("skipped %s", p)
    if not scan.items:
        raise DataValidationError([Problem(str(scan.base_dir), "no usable image")])
    if folds is None:
        splits = split_items(scan.items, labelled_fraction, seed, labelled_count=labelled_count)
    else:
        splits = fold_items(scan.items, folds, fold, seed, labelled_fraction, labelled_count)
    counts = {k: len(v) for k, v in splits.items()}
    for key in ("training_labelled", "validation", "test"):  # unlabelled items keep no label, hence no flag
        counts[f"positive_{key.removeprefix('training_')}"] = sum(bool(it.get("positive")) for it in splits[key])
    counts["skipped"] = len(scan.problems)
    return {
        "name": "SIIM-ACR pneumothorax" if scan.source == "siim-acr" else f"image folder {scan.base_dir.name}",
        "source": scan.source,
        "dataset_dir": str(scan.base_dir.resolve()),
        "labelled_fraction": labelled_fraction,
        "split_seed": seed,
        "folds": folds,
        "fold": None if folds is None else fold,
        "labelled_count": labelled_count,
        "verified": verify,
        "counts": counts,
        "skipped": [asdict(p) for p in scan.problems],
        **splits,
    }


def external_test_datalist(scan: ScanResult, skip_bad: bool = False, workers: int = 1) -> dict[str, Any]:
    """An external test set: every verified image of ``scan`` in ``test`` (the other splits empty)."""
    verify_items(scan, workers=workers)
    if scan.problems and not skip_bad:
        raise DataValidationError(scan.problems, hint=SKIP_HINT)
    if not scan.items:
        raise DataValidationError([Problem(str(scan.base_dir), "no usable image")])
    test = sorted(scan.items, key=lambda it: it["id"])
    return {
        "name": f"external test set {scan.base_dir.name}",
        "source": scan.source,
        "dataset_dir": str(scan.base_dir.resolve()),
        "counts": {"test": len(test), "positive_test": sum(bool(it.get("positive")) for it in test),
                   "skipped": len(scan.problems)},
        "skipped": [asdict(p) for p in scan.problems],
        **{key: [] for key in SPLIT_KEYS},
        "test": test,
    }  # fmt: skip


def resolve_paths(datalist: dict[str, Any], base_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Return the four splits with ``image``/``label`` joined to ``base_dir`` (MONAI datalist style; a pool
    image's absolute path stays as it is), and the unlabelled pool's summary when there is one."""
    base = Path(base_dir)
    out: dict[str, Any] = {}
    for key in SPLIT_KEYS:
        out[key] = [
            {k: str(base / v) if k in ("image", "label") else v for k, v in item.items()} for item in datalist[key]
        ]
    if datalist.get("pool"):
        out["pool"] = datalist["pool"]
    return out


def load_datalist(datalist_file: str | Path, dataset_dir: str | Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Load a datalist JSON written by ``scripts/prepare_siim.py`` with absolute paths.

    Paths resolve against ``dataset_dir`` when given, else against the folder recorded in the file.
    """
    with open(datalist_file) as f:
        datalist = json.load(f)
    missing = [k for k in SPLIT_KEYS if k not in datalist]
    if missing:
        raise ValueError(f"{datalist_file}: not a datalist of this collection, missing keys {missing}")
    return resolve_paths(datalist, dataset_dir or datalist["dataset_dir"])


def load_or_build_datalist(
    dataset_dir: str,
    datalist_file: str = "",
    labelled_fraction: float = 1.0,
    split_seed: int = 0,
    cache_dir: str | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """What a bundle calls: the given datalist file, or a split built from ``dataset_dir`` on the fly.

    A split built on the fly checks the layout and the CSV but decodes no images (an unreadable
    image fails later, naming its file); of a folder dataset it reads the masks alone, to stratify
    the split. Run ``scripts/prepare_siim.py`` for a full check.
    The built datalist is written to ``cache_dir`` for inspection and reuse.
    """
    if datalist_file:
        return load_datalist(datalist_file, dataset_dir)
    scan = scan_dataset(dataset_dir)
    read_mask_flags(scan)  # folder masks, for the stratification (build_datalist then has nothing left to read)
    if scan.problems:
        source = (
            f"--siim-dir {dataset_dir}"
            if scan.source == "siim-acr"
            else f"--image-dir {Path(dataset_dir) / FOLDER_IMAGE_DIR} --mask-dir {Path(dataset_dir) / FOLDER_MASK_DIR}"
        )
        raise DataValidationError(
            scan.problems,
            hint=(
                f"run `python scripts/prepare_siim.py {source} --out datalist.json --skip-bad` "
                "to skip and report them, then pass --datalist_file datalist.json"
            ),
        )
    datalist = build_datalist(scan, labelled_fraction, split_seed, verify=False)
    if cache_dir:
        key = hashlib.sha256(json.dumps([d for k, d in datalist.items() if k in SPLIT_KEYS]).encode()).hexdigest()
        atomic_write_json(Path(cache_dir) / f"datalist_{key[:12]}.json", datalist)
    return resolve_paths(datalist, scan.base_dir)
