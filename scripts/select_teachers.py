#!/usr/bin/env python
"""Pick each auxiliary task's teacher: the better of its joint and pre-training bundles.

Reads ``bundles/<task>_joint/models/metrics.json`` and ``bundles/<task>_pretrain/models/metrics.json``,
chooses per task the mode with the higher validation Dice (SIIM-ACR rule), prints the table and
writes the selection (task, chosen mode, both Dice values, checkpoint path and its sha256) to
``bundles/distill/models/teachers.json``, where the distillation bundle reads it.

Ties (equal to 1e-6) go to the higher positive-only Dice, then to the joint mode (one training
phase instead of two). A variant that is missing (no metrics.json or model.pt) or failed (training
not complete, no validation Dice) is an error naming it; with ``--allow-missing`` the other mode is
taken, and a task with neither is left out.

    python scripts/select_teachers.py [--bundles-dir bundles] [--tasks rotation jigsaw ...] [--allow-missing]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.utils.io import atomic_write_json  # noqa: E402
from scripts.generate_bundles import ALL_TASKS  # noqa: E402

MODES = ("joint", "pretrain")
DEFAULT_TASKS = ALL_TASKS  # the five tasks of the two-stage method and HSSL
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
    bundle = bundles_dir / f"{task}_{mode}"
    candidate = Candidate(bundle=bundle, mode=mode)
    metrics_file = bundle / "models" / "metrics.json"
    if not metrics_file.is_file():
        candidate.problem = f"missing: {metrics_file} does not exist (train the bundle first)"
        return candidate
    try:
        metrics = json.loads(metrics_file.read_text())
    except json.JSONDecodeError as e:
        candidate.problem = f"failed: {metrics_file} is not valid JSON ({e})"
        return candidate
    status = (metrics.get("training") or {}).get("status")
    validation = metrics.get("validation") or {}
    if status != "complete":
        candidate.problem = f"failed: training status is {status!r} in {metrics_file}"
    elif validation.get("dice") is None:
        candidate.problem = f"failed: no validation dice in {metrics_file}"
    elif not candidate.checkpoint.is_file():
        candidate.problem = f"missing: {candidate.checkpoint} does not exist"
    else:
        candidate.dice = float(validation["dice"])
        dp = validation.get("dice_positive")
        candidate.dice_positive = None if dp is None else float(dp)
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


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def select(bundles_dir: Path, tasks: list[str], allow_missing: bool) -> tuple[list[dict[str, Any]], list[str]]:
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
                "sha256": sha256(best.checkpoint),
            }
        )
    return entries, problems


def main(argv: list[str] | None = None) -> int:
    """Select, print the table, write the selection; exit 2 on a missing/failed variant."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles-dir", type=Path, default=REPO / "bundles")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    parser.add_argument("--out", type=Path, help="default: <bundles-dir>/distill/models/teachers.json")
    parser.add_argument("--allow-missing", action="store_true", help="use the other mode when one is missing/failed")
    args = parser.parse_args(argv)
    out = args.out or args.bundles_dir / "distill" / "models" / "teachers.json"
    entries, problems = select(args.bundles_dir, args.tasks, args.allow_missing)
    if problems and not args.allow_missing:
        print("error: stage-1 variants missing or failed:\n  " + "\n  ".join(problems), file=sys.stderr)
        print("train them, or pass --allow-missing to select from what is there", file=sys.stderr)
        return 2
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if not entries:
        print("error: no task has a usable teacher", file=sys.stderr)
        return 2
    print(f"{'task':<12} {'joint dice':>10} {'pretrain dice':>13}  {'chosen':<8} reason")
    for e in entries:
        print(
            f"{e['task']:<12} {_fmt(e['val_dice_joint']):>10} {_fmt(e['val_dice_pretrain']):>13}  "
            f"{e['mode']:<8} {e['reason']}"
        )
    skipped = sorted(set(args.tasks) - {e["task"] for e in entries})
    atomic_write_json(
        out,
        {
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "bundles_dir": str(args.bundles_dir.resolve()),
            "teachers": entries,
            "tasks_without_teacher": skipped,
        },
    )
    print(f"wrote {out} ({len(entries)} teacher(s){', left out: ' + ', '.join(skipped) if skipped else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
