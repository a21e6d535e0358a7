"""The lambda sweep: each joint task's weight over several seeds; the table the bundle generator reads.

For every seed: the protocol's seeded datalist, the baseline, and every ``<task>_joint`` bundle once per
lambda (``aux_weights = {'<task>': lambda}``), trained under the run folder (bundles stay untouched),
several at a time, resumable like the protocol (the same fingerprints). The best validation metrics of
every run, their mean and standard deviation over the seeds go to the table (``scripts/lambda_sweep.json``);
the bundle generator takes each task's default lambda from it. A table swept at the same setting keeps
the tasks not swept this time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from common.ssl import list_tasks
from common.utils.io import atomic_write_json
from pipeline.paths import portable
from pipeline.report import stats
from pipeline.runner import Runner
from pipeline.setting import RunSetting
from pipeline.steps import Step, train_step

METRICS = ("dice", "dice_positive", "iou")


def sweep_steps(
    setting: RunSetting, tasks: Sequence[str], lambdas: Sequence[float], fraction: float, seed: int
) -> list[tuple[str, float | None, Step]]:
    """(task, lambda, step) for the seed: the baseline (task "baseline", lambda None) and every joint run."""
    seed_dir = setting.out / f"seed{seed}"
    data, datalist_sha = setting.seed_data(seed_dir, fraction, seed)
    facts = {"datalist": datalist_sha}
    steps: list[tuple[str, float | None, Step]] = [
        ("baseline", None, setting.step("baseline", "baseline", seed_dir / "baseline", data, facts))
    ]
    for task in tasks:
        for lam in lambdas:
            name = f"{task}_joint_lambda{lam:g}"
            run = setting.step(name, f"{task}_joint", seed_dir / name, data, facts, {"aux_weights": {task: lam}})
            steps.append((task, lam, run))
    return steps


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation of each metric over the seeds, plus the per-seed values."""
    out: dict[str, Any] = {"n": len(runs), "seeds": runs}
    for metric in METRICS:
        stat = stats([r.get(metric) for r in runs])
        out[metric], out[f"{metric}_std"] = stat["mean"], stat["std"]
    return out


def same_setting(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same data, labels, seeds and scale, and no override set differently in both (a task-only one, such
    as HSSL's multidomain_datalist, may be given to one sweep alone)."""
    keys = ("dataset", "labelled_fraction", "seeds", "scale")
    if not a or any(a.get(k) != b.get(k) for k in keys):
        return False
    oa, ob = a.get("overrides", {}), b.get("overrides", {})
    return all(oa[k] == ob[k] for k in set(oa) & set(ob))


def merge_previous(table: dict[str, Any], table_file: Path) -> dict[str, Any]:
    """The table with the tasks a previous sweep at the same setting measured and this one did not."""
    previous = json.loads(table_file.read_text()) if table_file.is_file() else {}
    if same_setting(previous.get("setting") or {}, table["setting"]):
        table["tasks"] = {**previous.get("tasks", {}), **table["tasks"]}
        table["setting"]["overrides"] = {**previous["setting"]["overrides"], **table["setting"]["overrides"]}
    return table


def run_sweep(
    dataset_dir: str | Path,
    out: str | Path,
    table: str | Path,
    lambdas: Sequence[float] = (0.01, 0.1, 1.0),
    tasks: Sequence[str] | None = None,
    labelled_fraction: float = 0.2,
    seeds: Sequence[int] = (0, 1, 2),
    scale: str = "demo",
    overrides: dict[str, Any] | None = None,
    jobs: int | None = None,
    skip_bad: bool = False,
    force: bool = False,
) -> int:
    """Run the sweep, write the table (paths in it portable) and print it."""
    setting = RunSetting(Path(dataset_dir), Path(out), scale, dict(overrides or {}), skip_bad, force)
    tasks, table_file = list(tasks or list_tasks()), Path(table)
    runner = Runner(jobs, 1, setting.out / "logs")
    start = time.time()
    runs = [(seed, *s) for seed in seeds for s in sweep_steps(setting, tasks, lambdas, labelled_fraction, seed)]
    runner.run_all({f"[seed {seed}] {s.name}": partial(train_step, runner, s, force) for seed, _, _, s in runs})
    results: dict[str, list[dict[str, Any]]] = {}
    for _seed, task, lam, s in runs:
        best = s.metrics.validation
        if not best:
            raise SystemExit(f"error: {s.metrics_file} has no validation result (epochs < val_interval?)")
        results.setdefault(f"{task}|{lam}", []).append({m: best.get(m) for m in METRICS})
    swept = {
        "setting": {
            "dataset": setting.dataset_dir.name,
            "labelled_fraction": labelled_fraction,
            "seeds": list(seeds),
            "scale": scale,
            "overrides": {k: v for k, v in setting.preset.items() if k != "pretrain_epochs"},
        },
        "baseline": summarise(results["baseline|None"]),
        "tasks": {task: [{"lambda": lam, **summarise(results[f"{task}|{lam}"])} for lam in lambdas] for task in tasks},
        "wall_s": round(time.time() - start),
    }
    swept = merge_previous(swept, table_file)
    atomic_write_json(table_file, portable(swept))
    base = swept["baseline"]
    print(f"baseline: val dice {base['dice']:.3f} ± {base['dice_std']:.3f}")
    for task, rows in swept["tasks"].items():
        for row in rows:
            print(f"{task} lambda={row['lambda']:g}: val dice {row['dice']:.3f} ± {row['dice_std']:.3f}")
    print(f"wrote {table_file} ({swept['wall_s']} s)")
    return 0
