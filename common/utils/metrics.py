"""``models/metrics.json``: the one place that knows its layout.

Written by the training and evaluation handlers (``common.training.handlers``), the pre-training and
soft-target set-up, and the pipeline; read by teacher selection, the pipeline, sweeps and the report.
Sections (top-level keys):

- ``training``: ``status`` (``running`` / ``complete`` / ``failed``), epochs, key metric, data counts;
- ``config``: the configuration that produced the numbers (``pipeline_fingerprint`` among them);
- ``model``: what inference needs to reproduce the training preprocessing (``image_size``, ...) and
  the saved ``model.pt``'s sha256;
- ``validation``: the best validation metrics (``dice``, ``dice_positive``, ``iou``, ``best_epoch``);
- ``history``: one point per validation (the learning curve);
- ``test``, ``ensemble_test`` (any ``<split>`` / ``ensemble_<split>``): evaluation results;
- ``pretraining``, ``distillation``: what the phase before fine-tuning / the soft targets recorded; a
  pre-training run alone (``pretrain.json``) also records there its ``status``, ``pretrained.pt``'s sha256
  and its ``pipeline_fingerprint`` (``record_pretrained``), which is what the pipeline's store reuses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.utils.io import atomic_write_json, file_sha256


def read_metrics_file(path: str | Path) -> dict[str, Any]:
    """Load a metrics.json (an empty dict when it does not exist yet)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def update_metrics_file(path: str | Path, **sections: Any) -> dict[str, Any]:
    """Replace the given top-level sections of a metrics.json atomically, keeping the others."""
    doc = read_metrics_file(path)
    doc.update(sections)
    doc["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(path, doc)
    return doc


def record_pretrained(metrics_file: str | Path, pretrained_file: str | Path) -> str:
    """Mark a pre-training run alone (``pretrain.json``) complete in its metrics.json: the ``pretraining``
    section gains ``status``, the weights' ``sha256`` and the run's ``pipeline_fingerprint`` (None outside
    the pipeline), so the pipeline can reuse the file (``pipeline.steps``). Returns ``pretrained_file``."""
    from common.utils.bundle import running_config

    phase = read_metrics_file(metrics_file).get("pretraining") or {}
    update_metrics_file(
        metrics_file,
        pretraining={
            **phase,
            "status": "complete",
            "sha256": file_sha256(pretrained_file),
            "pipeline_fingerprint": running_config().get("pipeline_fingerprint"),
        },
    )
    return str(pretrained_file)


# what inference must reproduce from training: recorded in the ``model`` section when training starts
MODEL_SETTINGS = ("image_size", "min_pred_area_fraction")
#: positive-only Dice below which a model counts as blank: it finds no lesion, its Dice comes from the negatives
#: (the report marks such rows; teacher selection refuses such variants)
BLANK_POSITIVE_DICE = 0.01


def trained_setting(checkpoint: str | Path, key: str, default: Any) -> Any:
    """A setting the model was trained with (``model`` section of the ``metrics.json`` next to
    ``checkpoint``), else ``default``: inference resizes to the training resolution without being told."""
    value = (read_metrics_file(Path(checkpoint).parent / "metrics.json").get("model") or {}).get(key)
    return default if value is None else value


@dataclass
class RunMetrics:
    """Typed read access to one bundle run's ``metrics.json`` (missing sections read as empty)."""

    doc: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> RunMetrics:
        """The metrics of ``path`` (empty when the file does not exist)."""
        return cls(read_metrics_file(path))

    def section(self, name: str) -> dict[str, Any]:
        """A top-level section as a dict ({} when absent or null)."""
        return self.doc.get(name) or {}

    @property
    def status(self) -> str | None:
        """``running``, ``complete`` or ``failed`` (None before training started)."""
        return self.section("training").get("status")

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def fingerprint(self) -> str | None:
        """The pipeline fingerprint the run was trained with."""
        return self.section("config").get("pipeline_fingerprint")

    @property
    def validation(self) -> dict[str, Any]:
        return self.section("validation")

    def validation_metric(self, name: str = "dice") -> float | None:
        """A best-epoch validation metric, or None when not measured."""
        value = self.validation.get(name)
        return None if value is None else float(value)

    @property
    def pretraining(self) -> dict[str, Any]:
        """What the pre-training phase recorded (``epochs``, ``metrics``; {} for a bundle without one)."""
        return self.section("pretraining")

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.doc.get("history") or []

    @property
    def model(self) -> dict[str, Any]:
        """What travels with ``model.pt``: ``image_size``, normalisation, the file's sha256."""
        return self.section("model")

    @property
    def image_size(self) -> int | None:
        size = self.model.get("image_size")
        return None if size is None else int(size)

    def evaluation(self, split: str = "test", ensemble: bool = False) -> dict[str, Any]:
        """An evaluation section (``test`` or ``ensemble_test``, ...)."""
        return self.section(f"ensemble_{split}" if ensemble else split)
