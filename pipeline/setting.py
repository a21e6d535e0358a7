"""What every bundle run of one invocation shares: the data, the run folder, the scale and the user's overrides."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.data.datalist import build_datalist, external_test_datalist, scan_dataset
from common.data.pool import ALL, with_pool
from common.utils.io import atomic_write_json, file_sha256
from pipeline.paths import BUNDLES, portable, portable_path
from pipeline.scales import SCALES, bundle_overrides, check_overrides
from pipeline.steps import Step, output_overrides


@dataclass
class RunSetting:
    """The data, the run folder (``out``), the scale preset and the ``--set`` overrides of one invocation.

    ``dataset_dir`` and ``out`` are resolved (bundles run from the repository root); ``shown`` keeps them
    as published summaries record them (``pipeline.paths.portable_path``). Every ``--set`` key must be a
    setting of one of ``bundles`` (the names in ``bundles/`` the run uses; default: any bundle).
    ``unlabelled_dirs``/``pool_size``: the unlabelled pool each seed's datalist gets (``common.data.pool``).
    """

    dataset_dir: Path
    out: Path
    scale: str = "full"
    overrides: dict[str, Any] = field(default_factory=dict)
    skip_bad: bool = False
    force: bool = False
    bundles: Sequence[str] | None = None
    unlabelled_dirs: Sequence[Path] = ()
    pool_size: int | str = ALL
    pretrain_store: Path | None = None  # default <out>/pretrained
    shown: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        check_overrides(self.overrides, self.bundles)
        self.shown = {
            "dataset_dir": portable_path(self.dataset_dir),
            "out": portable_path(self.out),
            "unlabelled_dirs": [portable_path(d) for d in self.unlabelled_dirs],
        }
        self.dataset_dir, self.out = Path(self.dataset_dir).resolve(), Path(self.out).resolve()
        self.unlabelled_dirs = [Path(d).resolve() for d in self.unlabelled_dirs]
        self.pretrain_store = Path(self.pretrain_store or self.out / "pretrained").resolve()
        for folder in [self.dataset_dir, *self.unlabelled_dirs]:
            if not folder.is_dir():
                raise SystemExit(f"error: folder {folder} does not exist (make demo-data writes the demo)")

    @property
    def preset(self) -> dict[str, Any]:
        """The scale preset with the user's overrides on top, as published (portable paths)."""
        return portable({**SCALES[self.scale], **self.overrides})

    def seed_data(
        self,
        seed_dir: Path,
        fraction: float,
        seed: int,
        write: bool = True,
        folds: int | None = None,
        fold: int = 0,
        labelled_count: int | None = None,
    ) -> tuple[dict[str, Any], str]:
        """Write the seed's verified datalist once (split and labelled subset); return the data overrides every
        run of the seed shares (data, split, seeds, the shared cache) and the datalist's sha256. ``write=False``
        (a dry run): a missing datalist is built in memory only; its sha256 is that of the file it would be.
        ``folds``/``fold``: fold ``fold`` of a stratified k-fold split instead of 70/15/15; ``labelled_count``:
        exactly that many labelled training images instead of ``fraction`` (``common.data.datalist``)."""
        datalist_file = seed_dir / "datalist.json"
        if not datalist_file.is_file():
            scan = scan_dataset(self.dataset_dir)
            datalist = build_datalist(
                scan,
                fraction,
                seed,
                skip_bad=self.skip_bad,
                workers=os.cpu_count() or 1,
                folds=folds,
                fold=fold,
                labelled_count=labelled_count,
            )
            datalist = with_pool(
                datalist,
                self.unlabelled_dirs,
                self.pool_size,
                seed,
                self.out / "cache",
                self.skip_bad,
                os.cpu_count() or 1,
            )
            if not write:  # the file it would be, written outside the run folder and gone at once
                with tempfile.TemporaryDirectory() as tmp:
                    sha = file_sha256(atomic_write_json(Path(tmp) / datalist_file.name, datalist))
                return self._data(datalist_file, fraction, seed), sha
            atomic_write_json(datalist_file, datalist)
        return self._data(datalist_file, fraction, seed), file_sha256(datalist_file)

    def pool_data(self, seed_datalist: Path, seed: int, write: bool = True) -> tuple[dict[str, Any], str]:
        """The pool alone as a datalist (``<store>/seed<S>/pool.json``, rewritten only when its content
        changes): what the pre-training store's runs read, so their fingerprint does not depend on the
        labelled split. Taken from a datalist of the seed (every datalist of a seed holds the same pool: the
        leak check compares with the whole labelled dataset). Returns the data overrides and its sha256."""
        with open(seed_datalist) as f:
            datalist = json.load(f)
        pool = {
            "dataset_dir": datalist["dataset_dir"],
            "training_labelled": [],
            "training_unlabelled": [it for it in datalist["training_unlabelled"] if "source" in it],
            "validation": [],
            "test": [],
            "pool": datalist.get("pool"),
        }
        pool_file = self.pretrain_store / f"seed{seed}" / "pool.json"
        # nothing of the run folder: the store's runs are the same for every run folder sharing the store
        data = {
            **self._data(pool_file, 1.0, seed),
            "aux_images": "pool",
            "cache_dir": str(self.pretrain_store / "cache"),
        }
        data.pop("labelled_fraction")
        if pool_file.is_file() and json.loads(pool_file.read_text()) == pool:
            return data, file_sha256(pool_file)
        if not write:  # a dry run: the sha256 of the file it would be
            with tempfile.TemporaryDirectory() as tmp:
                return data, file_sha256(atomic_write_json(Path(tmp) / pool_file.name, pool))
        return data, file_sha256(atomic_write_json(pool_file, pool))

    def external_data(self, name: str, folder: Path) -> dict[str, Any]:
        """An external test set's data overrides: its datalist (``external/<name>/datalist.json``, every image
        in ``test``; written once, verified) and folder."""
        datalist_file = self.out / "external" / name / "datalist.json"
        if not datalist_file.is_file():
            datalist = external_test_datalist(scan_dataset(folder), self.skip_bad, os.cpu_count() or 1)
            atomic_write_json(datalist_file, datalist)
        return {"dataset_dir": str(Path(folder).resolve()), "datalist_file": str(datalist_file)}

    def _data(self, datalist_file: Path, fraction: float, seed: int) -> dict[str, Any]:
        return {
            "dataset_dir": str(self.dataset_dir),
            "datalist_file": str(datalist_file),
            "labelled_fraction": fraction,
            "split_seed": seed,
            "seed": seed,
            "cache_dir": str(self.out / "cache"),
        }

    def step(
        self, name: str, bundle: str, out: Path, data: dict[str, Any], facts: Any, extra: dict | None = None
    ) -> Step:
        """A run of ``bundles/<bundle>`` writing to ``out``: the seed's data, the scale preset with the user's
        overrides, the run's own ``extra`` overrides; ``facts`` join its fingerprint (datalist, teachers)."""
        overrides = {
            **data,
            **bundle_overrides(self.scale, bundle, self.overrides),
            **(extra or {}),
            **output_overrides(out),
        }
        return Step(name, BUNDLES / bundle, out, overrides, facts)
