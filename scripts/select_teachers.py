#!/usr/bin/env python
"""Pick each auxiliary task's teacher: the better of its joint and pre-training bundles.

Reads ``bundles/<task>_joint/models/metrics.json`` and ``bundles/<task>_pretrain/models/metrics.json``,
chooses per task the mode with the higher best-epoch validation score (``--metric``: default
``dice_hmean``, the harmonic mean of positive-only Dice and the share of negatives predicted empty,
which a model predicting nothing cannot win; ``dice`` is the competition Dice, which such a model
can), prints the table and writes the selection (task, chosen mode, both scores, checkpoint path
and its sha256) to ``bundles/distill/models/teachers.json``, where the distillation bundle reads it.

A blank variant (validation positive-only Dice below 0.01: no better than predicting nothing) is
refused whatever its score; the table and the file list it. Ties (equal to 1e-6) go to the higher
positive-only Dice, then to the joint mode (one training phase instead of two). A variant that is
missing (no metrics.json or model.pt) or failed (training not complete, no validation score) is an
error naming it (exit 2); with ``--allow-missing`` the other mode is taken, and a task with neither is
left out. The rules: ``common/distill/selection.py``.

    python scripts/select_teachers.py [--bundles-dir bundles] [--tasks rotation jigsaw ...] [--allow-missing]
        [--metric dice_hmean|dice|dice_positive]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.distill.selection import DEFAULT_METRIC, select_teachers
from common.ssl import list_tasks
from common.training.metrics import CHECKPOINT_METRICS
from pipeline.paths import BUNDLES


def main(argv: list[str] | None = None) -> int:
    """Select, print the table, write the selection; exit 2 on a missing/failed variant."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles-dir", type=Path, default=BUNDLES)
    parser.add_argument("--tasks", nargs="+", default=list_tasks())
    parser.add_argument("--out", type=Path, help="default: <bundles-dir>/distill/models/teachers.json")
    parser.add_argument("--allow-missing", action="store_true", help="use the other mode when one is missing/failed")
    parser.add_argument(
        "--metric", choices=CHECKPOINT_METRICS, default=DEFAULT_METRIC, help="the validation score that decides"
    )
    args = parser.parse_args(argv)
    return select_teachers(args.bundles_dir, args.tasks, args.out, args.allow_missing, args.metric)


if __name__ == "__main__":
    sys.exit(main())
