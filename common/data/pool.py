"""The unlabelled pool: folders of unlabelled 2D images that join a datalist's ``training_unlabelled``.

Users have tens of annotated studies and thousands of unannotated ones. :func:`with_pool` adds every
image under one or more folders (searched recursively; any format ``common.data.imaging`` reads: DICOM,
PNG/JPEG, 2D NIfTI; any size, gray or colour) to ``training_unlabelled``, each item marked with its
``source`` (the folder's name), so every consumer of unlabelled images (joint auxiliary loaders,
pre-training, HSSL's target domain, the student's distillation, the mean teacher) gets it.

The pool never leaks into evaluation: each image is decoded once and fingerprinted (:func:`content_print`),
and a pool image is dropped, and counted, when it is a copy of an image of the labelled dataset or of an
earlier pool image: the same pixels after decoding (sha256 of the 8-bit quantised image, whatever the
container), or a near-duplicate (the same picture at another size or compression: the RMS difference of
the two standardised 32x32 thumbnails is below ``NEAR_DUPLICATE_RMS``). Fingerprints are cached under
``cache_dir`` by file size and modification time. A file that cannot be read stops the build naming it,
or with ``skip_bad`` is a counted skip listed in the summary (``datalist["pool"]``). ``pool_size`` keeps
a seeded subset (nested: the 250 images of a 250-pool are among those of a 500-pool).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.data.datalist import SPLIT_KEYS, DataValidationError, Problem, find_image_files, image_items
from common.data.imaging import IMAGE_SUFFIXES, ImageReadError, read_image
from common.utils.io import atomic_path

logger = logging.getLogger(__name__)

THUMBNAIL = 32  # side of the thumbnails compared for near-duplicates
# RMS difference of two standardised thumbnails below which two images are one picture. Measured on
# siim_real: a stage-2 DICOM (1024 px, JPEG) and its 256 px PNG differ by 0.001-0.007; distinct chest
# X-rays by 0.285 or more (the closest pair among the 1,000 pool images; pool to labelled: 0.36 or more).
NEAR_DUPLICATE_RMS = 0.1
POOL_SEED_STREAM = 4  # the pool subset's random stream (split: 0, labelled subset: 1, folds: 2, 3)
PRINTS_FILE = "pool_prints.npz"
ALL = "all"
AUX_IMAGES = ("all", "pool")


def pool_dirs(unlabelled_dir: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """The setting as a list of folders: ``""``/None -> none, one folder, or a list of them."""
    if unlabelled_dir is None or unlabelled_dir == "":
        return []
    if isinstance(unlabelled_dir, str | Path):
        return [Path(unlabelled_dir)]
    return [Path(d) for d in unlabelled_dir]


def _source_names(dirs: Sequence[Path]) -> list[str]:
    """Each folder's name (``unlabelled``), numbered when two folders share one (``unlabelled-2``)."""
    names: list[str] = []
    for d in dirs:
        name = Path(os.path.abspath(d)).name or "pool"
        names.append(name if name not in names else f"{name}-{sum(n.startswith(name) for n in names) + 1}")
    return names


def scan_pool(dirs: Sequence[Path]) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Every image file under the folders (sorted per folder), as items ``id`` (``<source>:<path in it>``),
    ``image`` (absolute path) and ``source``; broken links and unreadable folders as problems."""
    items: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for name, folder in zip(_source_names(dirs), dirs, strict=True):
        folder = Path(os.path.abspath(folder))
        if not folder.is_dir():
            raise FileNotFoundError(f"unlabelled_dir {folder}: folder not found")
        files, _ = find_image_files(folder, IMAGE_SUFFIXES, problems)
        items += [{"id": f"{name}:{p.relative_to(folder).as_posix()}", "image": str(p), "source": name} for p in files]
    return items, problems


def content_print(path: str | Path) -> tuple[str, np.ndarray]:
    """(sha256 of the decoded image quantised to 8 bits, with its size; standardised 32x32 thumbnail).

    Decoded by ``common.data.imaging.read_image`` (the one reader per format), so a DICOM and a PNG of
    the same pixels have the same sha256; the thumbnail is an area average (``torch``'s adaptive pooling),
    standardised to zero mean and unit variance, so a resized or re-compressed copy has nearly the same one.
    """
    image, _ = read_image(path)
    quantised = np.round(image * 255).astype(np.uint8)
    digest = hashlib.sha256(f"{quantised.shape}".encode() + quantised.tobytes()).hexdigest()
    thumb = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(image)[None, None], THUMBNAIL)[0, 0].numpy()
    std = float(thumb.std())
    thumb = (thumb - thumb.mean()) / std if std > 0 else np.zeros_like(thumb)
    return digest, thumb.astype(np.float32)


def _print_or_problem(path: str) -> tuple[str, np.ndarray] | Problem:
    try:
        return content_print(path)
    except ImageReadError as e:
        where, _, what = str(e).partition(": ")
        return Problem(where, what)


def _stamp(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


class PrintCache:
    """Fingerprints by (path, size, mtime) in ``<cache_dir>/pool_prints.npz`` (none without ``cache_dir``)."""

    def __init__(self, cache_dir: str | Path | None) -> None:
        self.file = Path(cache_dir) / PRINTS_FILE if cache_dir else None
        self.entries: dict[tuple[str, str], tuple[str, np.ndarray]] = {}
        self.changed = False
        if self.file and self.file.is_file():
            try:
                with np.load(self.file) as data:
                    keys, digests, thumbs = data["keys"], data["digests"], data["thumbs"]
                self.entries = {
                    tuple(k.split("\0", 1)): (str(d), t) for k, d, t in zip(keys, digests, thumbs, strict=True)
                }
            except (OSError, ValueError, KeyError):  # a torn or foreign cache: fingerprint again
                self.entries = {}

    def prints(self, paths: Sequence[str], workers: int = 1) -> list[tuple[str, np.ndarray] | Problem]:
        """The fingerprint of each path (decoding only those not cached), or the problem reading it."""
        keys = [(p, _stamp(p)) for p in paths]
        todo = [p for p, key in zip(paths, keys, strict=True) if key not in self.entries]
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                fresh = list(pool.map(_print_or_problem, todo, chunksize=max(1, len(todo) // (workers * 8))))
        else:
            fresh = [_print_or_problem(p) for p in todo]
        found = dict(zip(todo, fresh, strict=True))
        out = []
        for path, key in zip(paths, keys, strict=True):
            if path in found:
                result = found[path]
                if not isinstance(result, Problem):
                    self.entries[key] = result
                    self.changed = True
            else:
                result = self.entries[key]
            out.append(result)
        return out

    def save(self) -> None:
        """Write the cache atomically when it learned anything."""
        if not (self.file and self.changed and self.entries):
            return
        keys = np.array(["\0".join(k) for k in self.entries])
        digests = np.array([d for d, _ in self.entries.values()])
        thumbs = np.stack([t for _, t in self.entries.values()])
        with atomic_path(self.file) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=keys, digests=digests, thumbs=thumbs)


def _duplicates(
    pool: list[dict[str, Any]],
    pool_prints: list[tuple[str, np.ndarray]],
    known: list[tuple[str, tuple[str, np.ndarray]]],
) -> list[Problem]:
    """Pool items that copy a labelled image (``known``: (id, print)) or an earlier pool item, as problems
    naming the image they copy; the pool keeps the first of equal pool images."""
    dropped: list[Problem] = []
    by_sha = {sha: f"labelled image {name}" for name, (sha, _) in known}
    ref_names = [f"labelled image {name}" for name, _ in known]
    refs = [thumb.reshape(-1) for _, (_, thumb) in known]
    kept_index: list[int] = []
    thumbs = torch.from_numpy(np.stack([t.reshape(-1) for _, t in pool_prints])) if pool_prints else None
    scale = float(THUMBNAIL * THUMBNAIL) ** 0.5  # cdist's L2 over the pixels -> RMS difference
    labelled_rms = (
        torch.cdist(thumbs, torch.from_numpy(np.stack(refs))) / scale if refs and thumbs is not None else None
    )
    pool_rms = torch.cdist(thumbs, thumbs) / scale if thumbs is not None else None
    for i, (item, (sha, _)) in enumerate(zip(pool, pool_prints, strict=True)):
        where = item["image"]
        if sha in by_sha:
            dropped.append(Problem(where, f"same pixels as {by_sha[sha]}"))
            continue
        if labelled_rms is not None and labelled_rms.shape[1]:
            j = int(labelled_rms[i].argmin())
            if float(labelled_rms[i, j]) < NEAR_DUPLICATE_RMS:
                rms = float(labelled_rms[i, j])
                dropped.append(Problem(where, f"near-duplicate of {ref_names[j]} (thumbnail RMS difference {rms:.3f})"))
                continue
        if kept_index:
            distances = pool_rms[i, kept_index]
            j = int(distances.argmin())
            if float(distances[j]) < NEAR_DUPLICATE_RMS:
                other = pool[kept_index[j]]["id"]
                dropped.append(
                    Problem(
                        where, f"duplicate of pool image {other} (thumbnail RMS difference {float(distances[j]):.3f})"
                    )
                )
                continue
        by_sha[sha] = f"pool image {item['id']}"
        kept_index.append(i)
    return dropped


def _check_pool_size(pool_size: int | str) -> int | None:
    if pool_size == ALL or pool_size is None:
        return None
    if isinstance(pool_size, bool) or not isinstance(pool_size, int | np.integer) or pool_size < 0:
        raise ValueError(f"pool_size must be '{ALL}' or a whole number >= 0, got {pool_size!r}")
    return int(pool_size)


def seeded_subset(items: Sequence[dict[str, Any]], size: int | None, seed: int) -> list[dict[str, Any]]:
    """``size`` of ``items`` (all when None), drawn by a seeded ranking of their ids: subsets nest."""
    ranked = sorted(items, key=lambda it: it["id"])
    order = np.random.default_rng([seed, POOL_SEED_STREAM]).permutation(len(ranked))
    chosen = {ranked[i]["id"] for i in order[: len(ranked) if size is None else size]}
    return [it for it in ranked if it["id"] in chosen]


def build_pool(
    datalist: dict[str, Any],
    unlabelled_dir: str | Path | Sequence[str | Path] | None,
    pool_size: int | str = ALL,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    workers: int = 1,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The pool items for ``datalist`` (resolved paths) and the summary of how they were chosen.

    Raises :class:`DataValidationError` naming every unreadable pool file unless ``skip_bad``.
    """
    size = _check_pool_size(pool_size)
    dirs = pool_dirs(unlabelled_dir)
    items, problems = scan_pool(dirs)
    found = len(items) + len(problems)  # broken links count as found (and skipped)
    cache = PrintCache(cache_dir)
    prints = cache.prints([it["image"] for it in items], workers)
    readable = [(it, p) for it, p in zip(items, prints, strict=True) if not isinstance(p, Problem)]
    problems += [p for p in prints if isinstance(p, Problem)]
    if problems and not skip_bad:
        raise DataValidationError(problems, hint="fix or remove the pool files, or pass --skip-bad to skip them")
    base = Path(datalist.get("dataset_dir", ""))  # a datalist as written (relative paths) or resolved
    labelled = [it for key in SPLIT_KEYS for it in datalist.get(key, []) if "source" not in it]
    labelled_paths = [str(base / it["image"]) for it in labelled]
    known = list(zip([it["id"] for it in labelled], cache.prints(labelled_paths, workers), strict=True))
    unreadable = [p for _, p in known if isinstance(p, Problem)]
    if unreadable:  # the leak check needs every labelled image: one that cannot be read is the dataset's problem
        raise DataValidationError(unreadable, hint="the labelled dataset has unreadable images")
    cache.save()
    dropped = _duplicates([it for it, _ in readable], [p for _, p in readable], known)
    dropped_where = {p.where for p in dropped}
    usable = [it for it, _ in readable if it["image"] not in dropped_where]
    chosen = seeded_subset(usable, size, seed)
    names = _source_names(dirs)

    def per_source(group: Sequence[dict[str, Any]]) -> dict[str, int]:
        return {name: sum(it["source"] == name for it in group) for name in names}

    summary = {
        "dirs": {name: str(d) for name, d in zip(names, dirs, strict=True)},
        "pool_size": ALL if size is None else size,
        "seed": seed,
        "found": per_source(items),
        "used": per_source(chosen),
        "counts": {
            "found": found,
            "skipped": len(problems),
            "dropped": len(dropped),
            "used": len(chosen),
        },
        "skipped": [asdict(p) for p in problems],
        "dropped": [asdict(p) for p in dropped],
    }
    for p in problems:
        logger.warning("pool: skipped %s", p)
    if dropped:
        logger.warning("pool: dropped %d duplicate(s) of labelled or earlier pool images", len(dropped))
    if size is not None and size > len(usable):
        logger.warning("pool: pool_size %d but only %d usable pool images: using all of them", size, len(usable))
    return chosen, summary


def with_pool(
    datalist: dict[str, Any], unlabelled_dir: str | Path | Sequence[str | Path] | None, *args: Any, **kwargs: Any
) -> dict[str, Any]:
    """``datalist`` with the pool's images appended to ``training_unlabelled`` and its summary as ``pool``
    (:func:`build_pool`, which takes the other arguments); unchanged without ``unlabelled_dir``. A datalist
    that already holds a pool (built by ``prepare_siim.py --unlabelled-dir`` or by the pipeline) takes no
    second one; without ``unlabelled_dir`` a ``pool_size`` other than ``all`` narrows that pool
    (:func:`narrow_pool`), so a bundle can learn from part of the pool its datalist holds."""
    if not pool_dirs(unlabelled_dir):
        pool_size = kwargs.get("pool_size", args[0] if args else ALL)
        if datalist.get("pool") and _check_pool_size(pool_size) is not None:
            return narrow_pool(datalist, pool_size)
        return datalist
    if datalist.get("pool"):
        raise ValueError(
            f"the datalist already holds an unlabelled pool (from {sorted(datalist['pool']['dirs'].values())}): "
            "give unlabelled_dir either to prepare_siim.py or to the bundle, not both"
        )
    chosen, summary = build_pool(datalist, unlabelled_dir, *args, **kwargs)
    out = {**datalist, "training_unlabelled": [*datalist["training_unlabelled"], *chosen], "pool": summary}
    return _with_counts(out, datalist, len(chosen))


def narrow_pool(datalist: dict[str, Any], pool_size: int | str) -> dict[str, Any]:
    """``datalist`` keeping ``pool_size`` of the pool images it holds: a subset seeded by the pool's own seed,
    hence nested (the images of a 250-pool are among those of a 500-pool). The labelled split's unlabelled
    images (those without a ``source``) stay. Asking for more images than the pool has keeps all of them,
    with a warning, as :func:`build_pool` does."""
    size = _check_pool_size(pool_size)
    pool = datalist["pool"]
    unlabelled = datalist["training_unlabelled"]
    own = [it for it in unlabelled if "source" not in it]
    pooled = [it for it in unlabelled if "source" in it]
    if size is not None and size > len(pooled):
        logger.warning("pool: pool_size %d but the datalist's pool has %d images: using all of them", size, len(pooled))
    kept = seeded_subset(pooled, size, pool["seed"])
    used = {name: sum(it["source"] == name for it in kept) for name in pool["used"]}
    summary = {
        **pool,
        "pool_size": ALL if size is None else size,
        "used": used,
        "counts": {**pool["counts"], "used": len(kept)},
        "narrowed_from": len(pooled),
    }
    out = {**datalist, "training_unlabelled": [*own, *kept], "pool": summary}
    return _with_counts(out, datalist, len(kept))


def _with_counts(out: dict[str, Any], datalist: dict[str, Any], pool_used: int) -> dict[str, Any]:
    """``out`` with ``counts`` updated for its unlabelled images, when ``datalist`` (as written by
    ``build_datalist``) has counts."""
    if "counts" in datalist:
        out["counts"] = {
            **datalist["counts"],
            "training_unlabelled": len(out["training_unlabelled"]),
            "pool": pool_used,
        }
    return out


def add_pool_arguments(parser: Any, dest: str = "unlabelled_dir") -> None:
    """The command-line options of the pool (``--unlabelled-dir`` repeatable, ``--pool-size``) on an
    ``argparse`` parser; the folders land in ``dest``."""
    parser.add_argument(
        "--unlabelled-dir",
        dest=dest,
        type=Path,
        action="append",
        default=[],
        help="folder of unlabelled images (DICOM/PNG/JPEG/NIfTI, searched recursively) for the pool; repeatable",
    )
    parser.add_argument(
        "--pool-size", default=ALL, type=lambda v: v if v == ALL else int(v), help="seeded subset of the pool"
    )


def pool_counts(datalist: dict[str, Any] | None) -> dict[str, Any] | None:
    """What ``metrics.json`` records of the pool: its counts and images used per source (None: no pool, or no
    datalist, as when MONAI Label supplies the data)."""
    pool = (datalist or {}).get("pool")
    if not pool:
        return None
    return {**pool["counts"], "per_source": pool["used"], "pool_size": pool["pool_size"]}


def aux_items(datalist: dict[str, Any], aux_images: str = "all") -> list[dict[str, Any]]:
    """The images the auxiliary tasks learn from, labels stripped: ``all`` the split's training images
    plus the pool; ``pool`` the pool alone (pre-training that does not depend on the labelled split,
    hence reusable across labelled subsets and folds)."""
    if aux_images not in AUX_IMAGES:
        raise ValueError(f"aux_images must be one of {AUX_IMAGES}, got {aux_images!r}")
    if aux_images == "pool":
        pool = [it for it in datalist["training_unlabelled"] if "source" in it]
        if not pool:
            raise ValueError("aux_images='pool' but the datalist has no unlabelled pool: set unlabelled_dir")
        return image_items(pool)
    return image_items(datalist["training_labelled"] + datalist["training_unlabelled"])
