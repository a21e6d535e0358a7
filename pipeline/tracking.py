"""MLflow tracking of a pipeline run (``scripts/run_pipeline.py --tracking mlflow``), in ``<out>/mlruns``.

Every bundle command the run launches gets MONAI's ``--tracking`` with ``common/utils/mlflow_tracking.json``
(``pipeline.runner``): an MLflow run per training or evaluation, named as its log (``seed0-baseline-train``,
``seed0-distill-ensemble_test``), with the bundle's settings as params and its losses and metrics per epoch,
all in the experiment named after the run folder, in the folder's local file store (no server). After the
report, ``log_report`` adds the run ``report``: the run's settings as params, the numbers of the results
table as metrics (``<row>/<metric>``, means over seeds and folds), ``report.md``, ``results.json`` and the
figures as artifacts. Read the store with ``common.utils.tracking.local_client(<out>/mlruns)``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.utils.tracking import SETTINGS_FILE, file_store_uri, local_client

STORE = "mlruns"
REPORT_RUN = "report"
PARAM_LIMIT = 6000  # MLflow's longest param value
BATCH = 500  # metrics per log_batch call (MLflow takes at most 1000)


def experiment_name(out: Path) -> str:
    """The run folder's experiment: the folder's name."""
    return Path(out).resolve().name


def bundle_arguments(out: Path, run_name: str, executed_config: Path) -> list[str]:
    """The ``monai.bundle run`` arguments that track one bundle command as run ``run_name`` in ``out``'s store.

    ``executed_config``: where MONAI writes the merged config that the run logs as an artifact. Given as a path
    because MONAI 1.6.1 builds its default one by appending to the raw ``output_dir`` item, which is no
    expression when the pipeline overrides ``output_dir`` (the artifact would then be missing)."""
    return [
        "--tracking", str(SETTINGS_FILE),
        "--tracking_uri", file_store_uri(Path(out) / STORE),
        "--experiment_name", experiment_name(out),
        "--run_name", run_name,
        "--save_execute_config", str(executed_config),
    ]  # fmt: skip


def prepare(out: Path) -> str:
    """Create the store and the run folder's experiment unless there (before bundles run side by side, which
    would each create it); return the experiment's id."""
    client = local_client(Path(out) / STORE)
    experiment = client.get_experiment_by_name(experiment_name(out))
    return experiment.experiment_id if experiment else client.create_experiment(experiment_name(out))


def metric_key(row: str, stat: str) -> str:
    """``student (distill)``, ``test_dice`` -> ``student_distill/test_dice`` (characters MLflow accepts)."""
    return re.sub(r"[^\w.\-]+", "_", row).strip("_") + "/" + stat


def headline_metrics(summary: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Every mean of the report's summary (and its standard deviation over two runs or more), by metric key."""
    out = {}
    for row, entry in summary.items():
        for stat, value in entry.items():
            if not isinstance(value, dict) or value.get("mean") is None:
                continue
            out[metric_key(row, stat)] = float(value["mean"])
            if value.get("n", 0) > 1:
                out[metric_key(row, f"{stat}_std")] = float(value["std"])
    return out


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:PARAM_LIMIT]


def log_report(out: Path, command: Sequence[str] = ()) -> str:
    """Log the written report as the run ``report`` of ``out``'s experiment: the settings given (params), the
    headline metrics, ``report.md``, ``results.json`` and the figures (artifacts); return the run's id."""
    from mlflow.entities import Metric, Param

    out = Path(out)
    results = json.loads((out / "results.json").read_text())
    client = local_client(out / STORE)
    tags = {"phase": "report", "command": _param(" ".join(["scripts/run_pipeline.py", *command]))}
    run_id = client.create_run(prepare(out), run_name=REPORT_RUN, tags=tags).info.run_id
    settings = {k: v for k, v in results["settings"].items() if v is not None}
    client.log_batch(run_id, params=[Param(k, _param(v)) for k, v in settings.items()])
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in headline_metrics(results["summary"]).items()]
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH])
    for path in [out / "report.md", out / "results.json", *sorted(out.glob("*.png"))]:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id
