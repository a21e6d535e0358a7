"""What every bundle run of one invocation shares: the data, the run folder, the scale and the user's overrides."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.data.datalist import build_datalist, scan_dataset
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
    """

    dataset_dir: Path
    out: Path
    scale: str = "full"
    overrides: dict[str, Any] = field(default_factory=dict)
    skip_bad: bool = False
    force: bool = False
    bundles: Sequence[str] | None = None
    shown: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        check_overrides(self.overrides, self.bundles)
        self.shown = {"dataset_dir": portable_path(self.dataset_dir), "out": portable_path(self.out)}
        self.dataset_dir, self.out = Path(self.dataset_dir).resolve(), Path(self.out).resolve()
        if not self.dataset_dir.is_dir():
            raise SystemExit(
                f"error: dataset folder {self.dataset_dir} does not exist (make demo-data writes the demo)"
            )

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
            if not write:  # the file it would be, written outside the run folder and gone at once
                with tempfile.TemporaryDirectory() as tmp:
                    sha = file_sha256(atomic_write_json(Path(tmp) / datalist_file.name, datalist))
                return self._data(datalist_file, fraction, seed), sha
            atomic_write_json(datalist_file, datalist)
        return self._data(datalist_file, fraction, seed), file_sha256(datalist_file)

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
