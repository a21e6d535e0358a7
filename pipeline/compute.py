"""What each stage of a run cost: wall and CPU seconds of every bundle command, summed per run.

``Runner.bundle`` appends one JSON line per command to ``<run>/logs/compute.jsonl`` (its log name, the
datalist it read, wall seconds, and the CPU seconds of the bundle process and its waited-for children,
from ``os.wait4``). A run interrupted and resumed has one line per segment; ``summarise`` adds them up per
run (the datalist tells runs of the same model apart: one per seed and fold, the pool's for pre-training)
and averages over the runs, per model and stage (the log name's last part: ``pretrain``, ``train``,
``tune``, ``test``, ...). Users weigh a bundle by these minutes; the report prints them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

COMPUTE_FILE = "compute.jsonl"
#: the stages in the report's column order; evaluation stages are summed into one column
TRAINING_STAGES = ("pretrain", "train")


def record(log_dir: Path, log_name: str, datalist: str, wall_s: float, cpu_s: float) -> None:
    """Append one command's cost (the caller serialises concurrent calls)."""
    line = {"log": log_name, "datalist": datalist, "wall_s": round(wall_s, 2), "cpu_s": round(cpu_s, 2)}
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


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``model -> stage -> {cpu_min, wall_min, runs}``: the mean over runs of each run's summed segments."""
    per_run: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in records:
        model, stage = model_and_stage(r["log"])
        totals = per_run[(model, stage, r["datalist"])]
        totals[0] += r["cpu_s"]
        totals[1] += r["wall_s"]
    grouped: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for (model, stage, _), totals in per_run.items():
        grouped[(model, stage)].append(totals)
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (model, stage), runs in sorted(grouped.items()):
        out[model][stage] = {
            "cpu_min": round(sum(t[0] for t in runs) / len(runs) / 60, 2),
            "wall_min": round(sum(t[1] for t in runs) / len(runs) / 60, 2),
            "runs": len(runs),
        }
    return dict(out)


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
