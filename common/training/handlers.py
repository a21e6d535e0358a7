"""Ignite handlers that write ``models/metrics.json``: best validation metrics, status, config.

The file is always replaced atomically. Its ``status`` is ``running`` while training, then
``complete`` or ``failed``, so a half-finished run never looks like a finished one; ``config``
holds the configuration that produced the numbers (what the pipeline compares to skip reruns).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from common.training.precision import processor
from common.utils.bundle import running_config, running_settings
from common.utils.io import file_sha256
from common.utils.metrics import MODEL_SETTINGS, read_metrics_file, update_metrics_file

logger = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    """JSON-safe metric value: floats rounded, NaN (e.g. no positive image) as null."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return None if math.isnan(value) else round(value, 6)


def _n_images(engine: Engine) -> int | None:
    """Images the engine's data loader covers (the whole dataset, also when a sampler shards it)."""
    loader = engine.state.dataloader
    source = getattr(loader, "dataset", loader)
    return len(source) if hasattr(source, "__len__") else None


def arithmetic(engine: Engine) -> dict[str, Any]:
    """What the numbers were computed in: the trainer's precision (``amp: auto`` picks bf16 on one CPU and
    fp32 on another), torch's CPU threads (their count changes float reductions) and the processor with the
    instruction sets its kernels use (bf16 kernels round differently on another CPU generation): runs that
    differ here differ in their numbers, seed and code alike."""
    precision = getattr(engine, "precision", None)
    name = precision.name if precision is not None else ("amp" if getattr(engine, "amp", False) else "fp32")
    device = precision.device_type if precision is not None else getattr(engine, "device", None) or "cpu"
    device_type = torch.device(device).type
    return {"precision": name, "torch_threads": torch.get_num_threads(), **processor(device_type)}


class TrainingMetricsWriter:
    """Attach to the trainer (after its ValidationHandler): record the best validation metrics.

    Args:
        evaluator: the validation evaluator (its ``state.metrics`` and best-metric bookkeeping).
        filepath: the metrics.json to write (next to ``model.pt``).
        key_metric: the metric that selects the best epoch (the checkpoint's metric).
        best_saver: the evaluator's key-metric CheckpointSaver; on resume it is told the best score so
            far, so a worse first epoch after resuming cannot overwrite ``model.pt``.
        extra: more facts to record (data counts, seed, ...).
        collapse_patience: validation rounds in a row with positive-only Dice 0 (while the validation set
            has positive images) after which the model is flagged as collapsed to blank predictions: a
            warning in the log and ``collapse`` in metrics.json (None while it is not collapsed).
    """

    def __init__(
        self,
        evaluator: Engine,
        filepath: str,
        key_metric: str = "dice",
        best_saver: Any = None,
        extra: dict | None = None,
        collapse_patience: int = 3,
    ) -> None:
        self.evaluator, self.filepath, self.key_metric = evaluator, Path(filepath), key_metric
        self.collapse_patience = collapse_patience
        self._collapse_warned = False
        if best_saver is not None and not isinstance(best_saver, CheckpointSaver):
            raise TypeError(f"best_saver must be the evaluator's key-metric CheckpointSaver, got {type(best_saver)}")
        self.best_saver = best_saver
        self.extra = extra or {}
        self.config = running_config()
        # what travels with model.pt: inference and the report read it instead of reconstructing it
        settings = running_settings(list(MODEL_SETTINGS))
        self.model_settings = {k: v if isinstance(v, (int, str)) else _clean(v) for k, v in settings.items()}
        self.history: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        """Register on the trainer's first epoch, epoch ends, completion and failure."""
        # the first EPOCH_STARTED comes after every STARTED handler, so after a CheckpointLoader
        # (attached later) has restored the epoch count: that is where "fresh" and "resumed" differ
        self._first_epoch = True
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)

    def _training(self, engine: Engine, status: str) -> dict[str, Any]:
        return {
            "status": status,
            "epochs_trained": engine.state.epoch,
            "max_epochs": engine.state.max_epochs,
            "key_metric": self.key_metric,
            "arithmetic": arithmetic(engine),
            **self.extra,
        }

    def epoch_started(self, engine: Engine) -> None:
        if not self._first_epoch:
            return
        self._first_epoch = False
        resumed = engine.state.epoch > 1
        sections: dict[str, Any] = {
            "training": self._training(engine, "running"),
            "config": self.config,
            "model": self.model_settings,
        }
        if resumed:
            previous = read_metrics_file(self.filepath)
            self._restore_best(previous.get("validation") or {})
            self.history = [h for h in previous.get("history") or [] if h.get("epoch", 0) <= engine.state.epoch]
        else:
            sections["validation"] = None  # a fresh run must not show an older run's numbers
            self.history = []
        sections["history"] = self.history
        update_metrics_file(self.filepath, **sections)

    def _restore_best(self, validation: dict[str, Any]) -> None:
        """Carry the best validation score of the interrupted run into the evaluator and its saver."""
        best = validation.get(self.key_metric)
        if best is None:
            return
        self.evaluator.state.best_metric = best
        self.evaluator.state.best_metric_epoch = validation.get("best_epoch", 0)
        if self.best_saver is not None:
            self.best_saver.load_state_dict({"_saved": [(best, "model.pt")]})

    def epoch_completed(self, engine: Engine) -> None:
        state = self.evaluator.state
        sections: dict[str, Any] = {"training": self._training(engine, "running")}
        validated = getattr(state, "epoch", None) == engine.state.epoch and bool(state.metrics)
        if validated:  # the learning curve: one point per validation
            point = {"epoch": engine.state.epoch, **{k: _clean(v) for k, v in state.metrics.items()}}
            point.update({f"train_{k}" if k != "train_loss" else k: _clean(v) for k, v in engine.state.metrics.items()})
            self.history.append(point)
            sections["history"] = self.history
            sections["collapse"] = self._collapse()
        if validated and getattr(state, "best_metric_epoch", -1) == engine.state.epoch:
            validation = {k: _clean(v) for k, v in state.metrics.items()}
            validation.update(best_epoch=engine.state.epoch, n_images=_n_images(self.evaluator))
            sections["validation"] = validation
        update_metrics_file(self.filepath, **sections)

    def _collapse(self) -> dict[str, Any] | None:
        """The trailing run of validations whose positive-only Dice is 0 (None values: no positive image,
        they neither start nor break a run), as ``{"since_epoch", "rounds"}`` once it reaches the patience."""
        blank = []
        for point in reversed(self.history):
            value = point.get("dice_positive")
            if value is None:
                continue
            if value > 0:
                break
            blank.append(point["epoch"])
        if len(blank) < self.collapse_patience:
            return None
        if not self._collapse_warned:
            self._collapse_warned = True
            logger.warning(
                "validation positive-only Dice has been 0 for %d validations (since epoch %d): the model predicts "
                "no lesion on any positive validation image (collapsed to blank; see 'collapse' in %s)",
                len(blank), blank[-1], self.filepath,
            )  # fmt: skip
        return {"since_epoch": blank[-1], "rounds": len(blank)}

    def completed(self, engine: Engine) -> None:
        model = dict(self.model_settings)
        saved = self.filepath.parent / "model.pt"
        if saved.is_file():  # the finished model's checksum: a later corruption or replacement is detectable
            model["sha256"] = file_sha256(saved)
        update_metrics_file(self.filepath, training=self._training(engine, "complete"), model=model)

    def failed(self, engine: Engine, e: Exception) -> None:
        training = self._training(engine, "failed")
        training["error"] = f"{type(e).__name__}: {e}"
        update_metrics_file(self.filepath, training=training)
        raise e


class EvaluationMetricsWriter:
    """Attach to an evaluator: on completion write its metrics under ``section`` (e.g. ``test``)."""

    def __init__(self, filepath: str, section: str, checkpoint: str = "", extra: dict | None = None) -> None:
        self.filepath, self.section, self.checkpoint = Path(filepath), section, checkpoint
        self.extra = extra or {}

    def attach(self, engine: Engine) -> None:
        """Register on the evaluator's completion."""
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def completed(self, engine: Engine) -> None:
        result = {k: _clean(v) for k, v in engine.state.metrics.items()}
        result.update(n_images=_n_images(engine), checkpoint=self.checkpoint, **self.extra)
        update_metrics_file(self.filepath, **{self.section: result})
