#!/usr/bin/env python
"""Sweep each joint task's lambda over several seeds; writes the table the bundle generator reads.

For every seed: the seeded datalist of ``scripts/run_pipeline.py``, the baseline, and every
``<task>_joint`` bundle once per lambda in ``--lambdas`` (``--aux_weights "{'<task>': lambda}"``),
trained through ``python -m monai.bundle run`` under ``--out`` (bundles stay untouched), several at
a time, resumable like the pipeline (the same fingerprints). The best validation metrics of every
run, their mean and standard deviation over the seeds go to ``--table`` (default
``scripts/lambda_sweep.json``); the bundle generator takes each task's default lambda from it
(highest mean validation Dice, the smaller lambda on a tie) and prints the sweep in the bundle's
README. A table swept at the same setting keeps the tasks not swept this time. The sweep itself:
``pipeline/sweep.py``.

    python scripts/sweep_lambda.py --dataset-dir ../shared/data/cxr_lungs --labelled-fraction 0.2 \\
        --seeds 0 1 2 --scale demo --set epochs=60 --out runs/lambda_sweep
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.ssl import list_tasks
from pipeline.cli import add_run_arguments, parse_run_arguments, run_command
from pipeline.paths import REPO
from pipeline.sweep import run_sweep


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, out=REPO / "runs" / "lambda_sweep", seeds=[0, 1, 2], scale="demo")
    parser.add_argument("--table", type=Path, default=REPO / "scripts" / "lambda_sweep.json")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--tasks", nargs="+", default=list_tasks(), choices=list_tasks())
    parser.add_argument("--labelled-fraction", type=float, default=0.2)
    parser.add_argument("--skip-bad", action="store_true")
    return run_command(run_sweep, parse_run_arguments(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
