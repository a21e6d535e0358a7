"""Teacher selection: each auxiliary task's teacher is the better of its joint and pre-training bundles.

Reads ``<bundles_dir>/<task>_joint/models/metrics.json`` and ``<bundles_dir>/<task>_pretrain/models/metrics.json``,
chooses per task the mode with the higher best-epoch validation score (``metric``; default ``dice_hmean``,
the bundles' checkpoint metric, which an empty predictor cannot win: ``common.training.metrics``), prints
the table and writes the selection (task, chosen mode, both scores, checkpoint path and its sha256) to
``<bundles_dir>/distill/models/teachers.json``, where the distillation bundle reads it
(``common.distill.teachers``).

A variant no better than the empty predictor on positive-only validation Dice (below
``BLANK_POSITIVE_DICE``: it finds no lesion) is refused, never selected nor ensembled, whatever its score;
the table and the file say so. Ties (equal to 1e-6) go to the higher positive-only Dice, then to the joint
mode (one training phase instead of two). A variant that is missing (no metrics.json or model.pt) or
failed (training not complete, no validation score) is an error naming it; with ``allow_missing`` the other
mode is taken, and a task with neither is left out.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.training.metrics import CHECKPOINT_METRICS
from common.utils.io import atomic_write_json, file_sha256
from common.utils.metrics import BLANK_POSITIVE_DICE, RunMetrics

MODES = ("joint", "pretrain")
TIE = 1e-6
DEFAULT_METRIC = "dice_hmean"


@dataclass
class Candidate:
    """One stage-1 bundle's outcome: usable (score set), refused (a blank model) or not usable (problem set)."""

    bundle: Path
    mode: str
    score: float | None = None
    dice_positive: float | None = None
    problem: str = ""
    refused: str = ""

    @property
    def checkpoint(self) -> Path:
        return self.bundle / "models" / "model.pt"

    @property
    def eligible(self) -> bool:
        return not self.problem and not self.refused


def read_candidate(bundles_dir: Path, task: str, mode: str, metric: str = DEFAULT_METRIC) -> Candidate:
    """Load a variant's metrics and say what, if anything, makes it unusable or refused."""
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
    score = metrics.validation_metric(metric)
    if not metrics.complete:
        candidate.problem = f"failed: training status is {metrics.status!r} in {metrics_file}"
    elif score is None:
        candidate.problem = f"failed: no validation {metric} in {metrics_file}"
    elif not candidate.checkpoint.is_file():
        candidate.problem = f"missing: {candidate.checkpoint} does not exist"
    else:
        candidate.score, candidate.dice_positive = score, metrics.validation_metric("dice_positive")
        if candidate.dice_positive is not None and candidate.dice_positive < BLANK_POSITIVE_DICE:
            candidate.refused = (
                f"blank: validation positive-only Dice {candidate.dice_positive:.4f} < {BLANK_POSITIVE_DICE} "
                "(no better than predicting nothing)"
            )
    return candidate


def choose(joint: Candidate, pretrain: Candidate) -> tuple[Candidate | None, str]:
    """The better eligible candidate and why it won (None and why when neither is eligible)."""
    usable = [c for c in (joint, pretrain) if c.eligible]
    if not usable:
        refused = [c for c in (joint, pretrain) if c.refused]
        return None, "every variant blank" if refused else "no usable variant"
    if len(usable) == 1:
        other = pretrain if usable[0] is joint else joint
        return usable[0], "the other variant is blank" if other.refused else "only usable variant"
    if abs(joint.score - pretrain.score) > TIE:
        best = max(usable, key=lambda c: c.score)
        return best, "higher validation score"
    jp, pp = joint.dice_positive or 0.0, pretrain.dice_positive or 0.0
    if abs(jp - pp) > TIE:
        return (joint if jp > pp else pretrain), "tie on the score; higher positive-only dice"
    return joint, "tie on the score and positive-only dice; joint preferred (one training phase)"


def select(
    bundles_dir: Path, tasks: Sequence[str], allow_missing: bool, metric: str = DEFAULT_METRIC
) -> tuple[list[dict[str, Any]], list[str], list[dict[str, str]]]:
    """The selection entries, the problems found and the refused (blank) variants (raises nothing)."""
    if metric not in CHECKPOINT_METRICS:
        raise ValueError(f"metric must be one of {', '.join(CHECKPOINT_METRICS)}, got {metric!r}")
    entries, problems, refused = [], [], []
    for task in tasks:
        joint, pretrain = (read_candidate(bundles_dir, task, mode, metric) for mode in MODES)
        for c in (joint, pretrain):
            if c.problem:
                problems.append(f"{c.bundle.name}: {c.problem}")
            if c.refused:
                refused.append({"task": task, "bundle": c.bundle.name, "reason": c.refused})
        best, reason = choose(joint, pretrain)
        if best is None or (not allow_missing and (joint.problem or pretrain.problem)):
            continue
        entries.append(
            {
                "task": task,
                "mode": best.mode,
                "bundle": best.bundle.name,
                "metric": metric,
                "val_joint": joint.score,
                "val_pretrain": pretrain.score,
                "val": best.score,
                "val_dice_positive": best.dice_positive,
                "reason": reason,
                "checkpoint": str(best.checkpoint.resolve()),
                "sha256": file_sha256(best.checkpoint),
            }
        )
    return entries, problems, refused


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_table(entries: list[dict[str, Any]], refused: Sequence[dict[str, str]] = ()) -> str:
    """Both modes' validation scores per task, the chosen mode and why; then every refused variant."""
    metric = entries[0]["metric"] if entries else DEFAULT_METRIC
    lines = [f"validation {metric}", f"{'task':<12} {'joint':>10} {'pretrain':>13}  {'chosen':<8} reason"]
    for e in entries:
        lines.append(
            f"{e['task']:<12} {_fmt(e['val_joint']):>10} {_fmt(e['val_pretrain']):>13}  {e['mode']:<8} {e['reason']}"
        )
    lines += [f"refused {r['bundle']}: {r['reason']}" for r in refused]
    return "\n".join(lines)


def select_teachers(
    bundles_dir: str | Path,
    tasks: Sequence[str] | None = None,
    out: str | Path | None = None,
    allow_missing: bool = False,
    metric: str = DEFAULT_METRIC,
) -> int:
    """Select, print the table, write the selection; return 2 (after saying why) on a missing/failed variant.

    ``tasks``: default every registered task (``common.ssl.list_tasks``); ``out``: default
    ``<bundles_dir>/distill/models/teachers.json``; ``metric``: the validation score that compares the modes.
    Returns 0 when the selection was written.
    """
    if tasks is None:
        from common.ssl import list_tasks

        tasks = list_tasks()
    bundles_dir = Path(bundles_dir)
    out = Path(out) if out else bundles_dir / "distill" / "models" / "teachers.json"
    entries, problems, refused = select(bundles_dir, tasks, allow_missing, metric)
    if problems and not allow_missing:
        print("error: stage-1 variants missing or failed:\n  " + "\n  ".join(problems), file=sys.stderr)
        print("train them, or pass --allow-missing to select from what is there", file=sys.stderr)
        return 2
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if not entries:
        print(format_table(entries, refused), file=sys.stderr)
        print("error: no task has a usable teacher (blank or missing: see above)", file=sys.stderr)
        return 2
    print(format_table(entries, refused))
    skipped = sorted(set(tasks) - {e["task"] for e in entries})
    atomic_write_json(
        out,
        {
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "bundles_dir": str(bundles_dir.resolve()),
            "metric": metric,
            "teachers": entries,
            "refused": refused,
            "tasks_without_teacher": skipped,
        },
    )
    print(f"wrote {out} ({len(entries)} teacher(s){', left out: ' + ', '.join(skipped) if skipped else ''})")
    return 0
