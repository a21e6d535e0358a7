"""Teacher selection: each auxiliary task's teacher is the better of its joint and pre-training bundles.

Reads ``<bundles_dir>/<task>_joint/models/metrics.json`` and ``<bundles_dir>/<task>_pretrain/models/metrics.json``,
chooses per task the mode with the higher validation Dice (SIIM-ACR rule), prints the table and writes
the selection (task, chosen mode, both Dice values, checkpoint path and its sha256) to
``<bundles_dir>/distill/models/teachers.json``, where the distillation bundle reads it
(``common.distill.teachers``).

Ties (equal to 1e-6) go to the higher positive-only Dice, then to the joint mode (one training phase
instead of two). A variant that is missing (no metrics.json or model.pt) or failed (training not
complete, no validation Dice) is an error naming it; with ``allow_missing`` the other mode is taken,
and a task with neither is left out.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.utils.io import atomic_write_json, file_sha256
from common.utils.metrics import RunMetrics

MODES = ("joint", "pretrain")
TIE = 1e-6


@dataclass
class Candidate:
    """One stage-1 bundle's outcome: usable (dice set) or not (problem set)."""

    bundle: Path
    mode: str
    dice: float | None = None
    dice_positive: float | None = None
    problem: str = ""

    @property
    def checkpoint(self) -> Path:
        return self.bundle / "models" / "model.pt"


def read_candidate(bundles_dir: Path, task: str, mode: str) -> Candidate:
    """Load a variant's metrics and say what, if anything, makes it unusable."""
    bundle = Path(bundles_dir) / f"{task}_{mode}"
    candidate = Candidate(bundle=bundle, mode=mode)
    metrics_file = bundle / "models" / "metrics.json"
    if not metrics_file.is_file():
        candidate.problem = f"missing: {metrics_file} does not exist (train the bundle first)"
        return candidate
    try:
        metrics = RunMetrics.read(metrics_file)
    except json.JSONDecodeError as e:
        candidate.problem = f"failed: {metrics_file} is not valid JSON ({e})"
        return candidate
    dice = metrics.validation_metric("dice")
    if not metrics.complete:
        candidate.problem = f"failed: training status is {metrics.status!r} in {metrics_file}"
    elif dice is None:
        candidate.problem = f"failed: no validation dice in {metrics_file}"
    elif not candidate.checkpoint.is_file():
        candidate.problem = f"missing: {candidate.checkpoint} does not exist"
    else:
        candidate.dice, candidate.dice_positive = dice, metrics.validation_metric("dice_positive")
    return candidate


def choose(joint: Candidate, pretrain: Candidate) -> tuple[Candidate | None, str]:
    """The better usable candidate and why it won."""
    usable = [c for c in (joint, pretrain) if not c.problem]
    if not usable:
        return None, "no usable variant"
    if len(usable) == 1:
        return usable[0], "only usable variant"
    if abs(joint.dice - pretrain.dice) > TIE:
        best = max(usable, key=lambda c: c.dice)
        return best, "higher validation dice"
    jp, pp = joint.dice_positive or 0.0, pretrain.dice_positive or 0.0
    if abs(jp - pp) > TIE:
        return (joint if jp > pp else pretrain), "tie on dice; higher positive-only dice"
    return joint, "tie on dice and positive-only dice; joint preferred (one training phase)"


def select(bundles_dir: Path, tasks: Sequence[str], allow_missing: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """The selection entries and the problems found (raises nothing; the caller decides)."""
    entries, problems = [], []
    for task in tasks:
        joint, pretrain = (read_candidate(bundles_dir, task, mode) for mode in MODES)
        for c in (joint, pretrain):
            if c.problem:
                problems.append(f"{c.bundle.name}: {c.problem}")
        best, reason = choose(joint, pretrain)
        if best is None or (not allow_missing and (joint.problem or pretrain.problem)):
            continue
        entries.append(
            {
                "task": task,
                "mode": best.mode,
                "bundle": best.bundle.name,
                "val_dice_joint": joint.dice,
                "val_dice_pretrain": pretrain.dice,
                "val_dice": best.dice,
                "reason": reason,
                "checkpoint": str(best.checkpoint.resolve()),
                "sha256": file_sha256(best.checkpoint),
            }
        )
    return entries, problems


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_table(entries: list[dict[str, Any]]) -> str:
    """Both modes' validation Dice per task, the chosen mode and why."""
    lines = [f"{'task':<12} {'joint dice':>10} {'pretrain dice':>13}  {'chosen':<8} reason"]
    for e in entries:
        lines.append(
            f"{e['task']:<12} {_fmt(e['val_dice_joint']):>10} {_fmt(e['val_dice_pretrain']):>13}  "
            f"{e['mode']:<8} {e['reason']}"
        )
    return "\n".join(lines)


def select_teachers(
    bundles_dir: str | Path,
    tasks: Sequence[str] | None = None,
    out: str | Path | None = None,
    allow_missing: bool = False,
) -> int:
    """Select, print the table, write the selection; return 2 (after saying why) on a missing/failed variant.

    ``tasks``: default every registered task (``common.ssl.list_tasks``); ``out``: default
    ``<bundles_dir>/distill/models/teachers.json``. Returns 0 when the selection was written.
    """
    if tasks is None:
        from common.ssl import list_tasks

        tasks = list_tasks()
    bundles_dir = Path(bundles_dir)
    out = Path(out) if out else bundles_dir / "distill" / "models" / "teachers.json"
    entries, problems = select(bundles_dir, tasks, allow_missing)
    if problems and not allow_missing:
        print("error: stage-1 variants missing or failed:\n  " + "\n  ".join(problems), file=sys.stderr)
        print("train them, or pass --allow-missing to select from what is there", file=sys.stderr)
        return 2
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if not entries:
        print("error: no task has a usable teacher", file=sys.stderr)
        return 2
    print(format_table(entries))
    skipped = sorted(set(tasks) - {e["task"] for e in entries})
    atomic_write_json(
        out,
        {
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "bundles_dir": str(bundles_dir.resolve()),
            "teachers": entries,
            "tasks_without_teacher": skipped,
        },
    )
    print(f"wrote {out} ({len(entries)} teacher(s){', left out: ' + ', '.join(skipped) if skipped else ''})")
    return 0
