"""Experiment tracking with MLflow in a local file store, through MONAI's bundle ``--tracking`` option.

MONAI 1.6.1's ``python -m monai.bundle run ... --tracking mlflow`` patches an ``MLFlowHandler`` into the
engines its ``DEFAULT_MLFLOW_SETTINGS`` name by config id (``train#trainer``/``train#handlers``,
``validate#evaluator``/``validate#handlers``, ``evaluator``/``handlers``: the ids of every bundle here). Two
things stop it here: its default store is SQLite, which needs the full ``mlflow`` package (SQLAlchemy; the
pinned ``mlflow-skinny`` has none), and ``MLFlowHandler`` refuses a local file store (``file:`` URI or folder).
Two more leave gaps: evaluate.json's engine is ``validate#evaluator``, which the defaults treat as a validator
(its run is never ended and logs no config), and pre-training (``pretrain#trainer``) is not tracked.
``SETTINGS_FILE`` holds the same settings for a file store, without those gaps, given to the same option::

    python -m monai.bundle run --config_file bundles/baseline/configs/train.json \\
        --tracking common/utils/mlflow_tracking.json

Runs land in ``<output_dir>/mlruns`` (``--tracking_uri`` another folder, ``file:`` URI or server;
``--experiment_name``, ``--run_name``; ``--tracking_params``: the dict logged as params). The handler is
``LocalMLFlowHandler``: MONAI's, plus the file store and new runs only (see the class). Read a store back
with ``local_client``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from monai.handlers import MLFlowHandler
from monai.utils import optional_import

mlflow, _ = optional_import("mlflow")

SETTINGS_FILE = Path(__file__).resolve().with_name("mlflow_tracking.json")
# MLFlowHandler's constructor refuses file stores; it gets this URI instead (building a client for it connects to
# nothing) and its client is then replaced by one for the file store
_ACCEPTED_PLACEHOLDER = "http://127.0.0.1:1"
# (store, experiment id, run name) -> id of the run a handler of this process opened and has not ended yet
_OPEN_RUNS: dict[tuple[str, str, str | None], str] = {}


def allow_file_store() -> None:
    """Let MLflow use a local file store unless the environment says otherwise.

    MLflow 3 keeps the file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is
    set; it is the store ``mlflow-skinny`` can write without a server or database, so asking for a local
    store (a folder or ``file:`` URI) is taken as consent: called only then, it sets the default ``true``."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def is_local(uri: str | os.PathLike | None) -> bool:
    """Whether ``uri`` names a local file store: empty (``./mlruns``), a folder or a ``file:`` URI."""
    text = str(uri or "")
    return text.startswith("file:") or "://" not in text


def file_store_uri(store: str | os.PathLike | None) -> str:
    """The ``file:`` URI of a local store (a folder, made absolute; empty: ``./mlruns``; a URI as given)."""
    text = str(store or "mlruns")
    return text if text.startswith("file:") else Path(text).expanduser().resolve().as_uri()


def local_client(store: str | os.PathLike) -> Any:
    """An ``MlflowClient`` reading (or writing) the local store ``store`` (folder or ``file:`` URI)."""
    allow_file_store()
    return mlflow.MlflowClient(tracking_uri=file_store_uri(store))


def mlflow_settings() -> dict[str, Any]:
    """The tracking settings of ``SETTINGS_FILE`` (what ``--tracking`` takes, as a dict for ``monai.bundle``)."""
    return json.loads(SETTINGS_FILE.read_text())


class LocalMLFlowHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` that also writes a local MLflow file store, and opens a new run per engine run.

    ``tracking_uri`` a folder or ``file:`` URI: that file store (``MLFLOW_TRACKING_URI``, when set, wins as in
    MONAI); anything else (a server, a database) goes to MONAI's handler unchanged. A handler whose engine starts
    while no handler of the process has a run of ``run_name`` open opens a new run (MONAI would continue any
    unfinished run of that name, one left by a crashed command too); one that starts meanwhile joins it (the
    validator joins the trainer's run). Only the opener logs ``artifacts`` and ends the run
    (``close_on_complete``). So a training with its validations is one run, pre-training another, and each
    evaluator pass one (``tune.json`` makes two: without and with TTA). ``tags`` go on the runs it opens."""

    def __init__(self, tracking_uri: str | None = None, tags: dict[str, str] | None = None, **kwargs: Any) -> None:
        local = not os.environ.get("MLFLOW_TRACKING_URI") and is_local(tracking_uri)
        super().__init__(tracking_uri=_ACCEPTED_PLACEHOLDER if local else tracking_uri, **kwargs)
        if local:
            allow_file_store()
            self.client = mlflow.MlflowClient(tracking_uri=file_store_uri(tracking_uri))
        self.tags = dict(tags or {})
        self._opened: tuple[str, str, str | None] | None = None

    def start(self, engine: Any) -> None:
        """Open a new run, or join the one another handler of the process has open; then MONAI's start."""
        if self.cur_run is None:
            self._set_experiment()
            key = (str(self.client.tracking_uri), self.experiment.experiment_id, self.run_name)
            if key in _OPEN_RUNS:
                self.cur_run = self.client.get_run(_OPEN_RUNS[key])
            else:
                name = self.run_name or f"run_{time.strftime('%Y%m%d_%H%M%S')}"
                self.cur_run = self.client.create_run(self.experiment.experiment_id, run_name=name, tags=self.tags)
                _OPEN_RUNS[key], self._opened = self.cur_run.info.run_id, key
        super().start(engine)

    def complete(self) -> None:
        """Log the artifacts, if this handler opened the run."""
        if self._opened:
            super().complete()

    def close(self) -> None:
        """End the run if this handler opened it; otherwise only let go of it (its opener ends it)."""
        if self._opened:
            _OPEN_RUNS.pop(self._opened, None)
            self._opened = None
            super().close()
        else:
            self.cur_run = None
