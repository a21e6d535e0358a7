"""The command-line arguments the protocol commands share (``scripts/run_pipeline.py``, ``sweep_lambda.py``,
``compare_pretraining.py``): data, run folder, seeds, scale, ``--set``, jobs, ``--force``; and how they end
on a failed step (``error: ...``, no traceback)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.utils.checkpoints import CheckpointError
from pipeline.paths import REPO
from pipeline.runner import StepError
from pipeline.scales import SCALES, parse_overrides


def add_run_arguments(
    parser: argparse.ArgumentParser, out: Path, seeds: list[int], scale: str, dataset_required: bool = False
) -> None:
    """Add the shared arguments (``--set`` lands in ``overrides``)."""
    if dataset_required:
        parser.add_argument("--dataset-dir", type=Path, required=True)
    else:
        parser.add_argument("--dataset-dir", type=Path, default=REPO / "demo_data" / "siim")
    parser.add_argument("--out", type=Path, default=out, help="run folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    parser.add_argument("--scale", choices=sorted(SCALES), default=scale, help="epochs/resolution preset")
    parser.add_argument(
        "--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE", help="extra bundle overrides (JSON)"
    )
    parser.add_argument("--jobs", type=int, default=None, help="bundles trained at once (default: pipeline.runner)")
    parser.add_argument("--force", action="store_true", help="retrain and re-evaluate everything")


def add_only_folds_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--only-folds K ...``: a long k-fold run split over sittings (the splits do not change)."""
    parser.add_argument("--only-folds", type=int, nargs="+", default=[], metavar="K", help=what)


def parse_run_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> dict[str, Any]:
    """The parsed arguments as keywords (``--set`` parsed); progress lines then appear as they happen."""
    args = parser.parse_args(argv)
    args.overrides = parse_overrides(args.overrides)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # also in a log file
    return vars(args)


def run_command(function: Callable[..., int], arguments: dict[str, Any]) -> int:
    """``function(**arguments)``; a failed bundle run or step, or an unreadable checkpoint, ends the command
    with ``error: <what failed and why>`` (exit status 1) instead of a traceback."""
    try:
        return function(**arguments)
    except (StepError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
