"""What each stage of a run cost: wall and CPU seconds of every bundle command, summed per run.

``Runner.bundle`` appends one JSON line per command to ``<run>/logs/compute.jsonl`` (its log name, the
datalist it read, wall seconds, and the CPU seconds of the bundle process and its waited-for children,
from ``os.wait4``). A run interrupted and resumed has one line per segment; ``summarise`` adds them up per
run (the datalist tells runs of the same model apart: one per seed and fold, the pool's for pre-training)
and averages over the runs, per model and stage (the log name's last part: ``pretrain``, ``train``,
``tune``, ``test``, ...). Users weigh a bundle by these minutes; the report prints them. A line marked
``fresh`` (a training started from scratch, e.g. retrained after its settings changed, or an evaluation)
replaces the earlier lines of its run and stage, so a retrained model costs one training, not two (lines
written before the mark existed add up as before).

One output folder collects the commands of every sitting (``--only-folds 4`` after folds 0-3), so a summary
of some runs keeps only theirs: :func:`per_run` names each run by its datalist's folder (``seed0/fold4`` ->
``0/fold4``; the seed's pool pre-training, ``<store>/seed0/pool.json`` -> ``0``) and :func:`of_runs` keeps
the published runs and the pre-training of their seeds. Summaries publish these per-run costs, so merging
parts counts a pre-training that two parts share once (``pipeline.merge``).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

COMPUTE_FILE = "compute.jsonl"
#: the stages in the report's column order; evaluation stages are summed into one column
TRAINING_STAGES = ("pretrain", "train")


def record(log_dir: Path, log_name: str, datalist: str, wall_s: float, cpu_s: float, fresh: bool = False) -> None:
    """Append one command's cost (the caller serialises concurrent calls); ``fresh``: the command started its
    run over (not a resumed segment), so it replaces the run's earlier lines."""
    line = {"log": log_name, "datalist": datalist, "wall_s": round(wall_s, 2), "cpu_s": round(cpu_s, 2)}
    if fresh:
        line["fresh"] = True
    with open(log_dir / COMPUTE_FILE, "a") as f:
        f.write(json.dumps(line) + "\n")


def read(log_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """The recorded commands and how many lines were unreadable (a line cut by a kill -9 mid-write)."""
    path = log_dir / COMPUTE_FILE
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
            records.append(
                {
                    "log": str(item["log"]),
                    "datalist": str(item["datalist"]),
                    "wall_s": float(item["wall_s"]),
                    "cpu_s": float(item["cpu_s"]),
                    "fresh": item.get("fresh") is True,
                }
            )
        except (ValueError, KeyError, TypeError):
            bad += 1
    return records, bad


def model_and_stage(log_name: str) -> tuple[str, str]:
    """``fold0-rotation_joint-train`` -> (``rotation_joint``, ``train``): the pipeline's log names are
    ``<split folder>-<model>-<stage>``."""
    parts = log_name.split("-")
    if len(parts) < 3:
        raise ValueError(f"log name {log_name!r} is not <split>-<model>-<stage>")
    return "-".join(parts[1:-1]), parts[-1]


def run_of(datalist: str) -> str | None:
    """The run a command belonged to, from its datalist's folder: ``.../seed0/fold2/datalist.json`` ->
    ``0/fold2`` (the report's run key), ``.../seed0/<file>`` (a run without folds, or the seed's pool
    pre-training) -> ``0``; None for a folder outside the pipeline's layout."""
    folder = Path(datalist).parent
    fold = re.fullmatch(r"fold(\d+)", folder.name)
    seed = re.fullmatch(r"seed(\d+)", (folder.parent if fold else folder).name)
    if not seed:
        return None
    return f"{seed[1]}/fold{fold[1]}" if fold else seed[1]


def per_run(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{model, stage, run, cpu_s, wall_s}`` per run: the segments of a resumed run summed from its last
    fresh start on (runs told apart by their datalist; ``run`` is :func:`run_of` it)."""
    totals: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in records:
        model, stage = model_and_stage(r["log"])
        if r.get("fresh"):
            totals[(model, stage, r["datalist"])] = [0.0, 0.0]
        t = totals[(model, stage, r["datalist"])]
        t[0] += r["cpu_s"]
        t[1] += r["wall_s"]
    return [
        {"model": m, "stage": st, "run": run_of(d), "cpu_s": round(t[0], 2), "wall_s": round(t[1], 2)}
        for (m, st, d), t in totals.items()
    ]


def of_runs(runs: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """The per-run costs of the runs ``keys`` (``0/fold4``) and of their seeds' pool pre-trainings (``0``)."""
    wanted = set(keys) | {key.split("/")[0] for key in keys}
    return [r for r in runs if r["run"] in wanted]


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``model -> stage -> {cpu_min, wall_min, runs}``: the mean over the runs of :func:`per_run`."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        grouped[(r["model"], r["stage"])].append(r)
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (model, stage), group in sorted(grouped.items()):
        out[model][stage] = {
            "cpu_min": round(sum(r["cpu_s"] for r in group) / len(group) / 60, 2),
            "wall_min": round(sum(r["wall_s"] for r in group) / len(group) / 60, 2),
            "runs": len(group),
        }
    return dict(out)


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``model -> stage -> {cpu_min, wall_min, runs}``: the mean over runs of each run's summed segments."""
    return summarise_runs(per_run(records))


def compute_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: CPU minutes per run of each model's pre-training, training and evaluation (every other
    stage: tuning, test, tuned test), wall minutes in brackets."""
    lines = [
        "| model | pre-training (once per seed) | training | evaluation (tune + tests) |",
        "|---|---|---|---|",
    ]
    for model, stages in sorted(summary.items()):
        cells = []
        for stage in TRAINING_STAGES:
            s = stages.get(stage)
            cells.append(f"{s['cpu_min']:.1f} ({s['wall_min']:.1f})" if s else "-")
        evaluation = [s for name, s in stages.items() if name not in TRAINING_STAGES]
        cpu, wall = sum(s["cpu_min"] for s in evaluation), sum(s["wall_min"] for s in evaluation)
        cells.append(f"{cpu:.1f} ({wall:.1f})" if evaluation else "-")
        lines.append(f"| {model} | {' | '.join(cells)} |")
    return "\n".join(lines)
