"""What every bundle run of one invocation shares: the data, the run folder, the scale and the user's overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.data.datalist import build_datalist, scan_dataset
from common.utils.io import atomic_write_json, file_sha256
from pipeline.paths import BUNDLES, portable, portable_path
from pipeline.scales import SCALES, bundle_overrides
from pipeline.steps import Step, output_overrides


@dataclass
class RunSetting:
    """The data, the run folder (``out``), the scale preset and the ``--set`` overrides of one invocation.

    ``dataset_dir`` and ``out`` are resolved (bundles run from the repository root); ``shown`` keeps them
    as published summaries record them (``pipeline.paths.portable_path``).
    """

    dataset_dir: Path
    out: Path
    scale: str = "full"
    overrides: dict[str, Any] = field(default_factory=dict)
    skip_bad: bool = False
    force: bool = False
    shown: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
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

    def seed_data(self, seed_dir: Path, fraction: float, seed: int) -> tuple[dict[str, Any], str]:
        """Write the seed's verified datalist once (split and labelled subset); return the data overrides every
        run of the seed shares (data, split, seeds, the shared cache) and the datalist's sha256."""
        datalist_file = seed_dir / "datalist.json"
        if not datalist_file.is_file():
            scan = scan_dataset(self.dataset_dir)
            datalist = build_datalist(scan, fraction, seed, skip_bad=self.skip_bad, workers=os.cpu_count() or 1)
            atomic_write_json(datalist_file, datalist)
        data = {
            "dataset_dir": str(self.dataset_dir),
            "datalist_file": str(datalist_file),
            "labelled_fraction": fraction,
            "split_seed": seed,
            "seed": seed,
            "cache_dir": str(self.out / "cache"),
        }
        return data, file_sha256(datalist_file)

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
