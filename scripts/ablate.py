#!/usr/bin/env python
"""K-fold ablation of one bundle's settings: named override sets ("arms") trained on the same folds.

For every seed and fold: a stratified k-fold datalist (the fold is the test set; of the other folds 20%
validates, the rest trains, ``--labelled-fraction`` or exactly ``--labelled-count`` of it labelled), then
one run of ``--bundle`` per ``--arm NAME key=value ...`` (an arm without overrides: the bundle's own
settings; no ``--arm``: that one arm, named after the bundle), evaluated on the fold. Runs are resumable
and run side by side like the pipeline's. Writes ``<out>/ablation.json`` (per arm mean ± std over folds x
seeds, blank runs, every run, each fold's test ids) and prints the table; ``--publish FILE`` also writes
the summary there. ``--only-folds K ...`` trains and summarises only those folds (the splits do not change): a
long ablation runs over several sittings, each publishing its folds, and ``scripts/merge_results.py`` joins
the parts. The ablation itself: ``pipeline/ablation.py``.

    python scripts/ablate.py --dataset-dir ../shared/data/siim_real/labelled --folds 5 --seeds 0 1 \\
        --scale small --arm before checkpoint_metric=dice --arm after --out runs/imbalance
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.ablation import run_ablation
from pipeline.arms import parse_arms
from pipeline.cli import add_only_folds_argument, add_run_arguments, parse_run_arguments, run_command
from pipeline.paths import REPO, portable_command


def main(argv: list[str] | None = None) -> int:
    """Train and evaluate every arm on every fold; write and print the summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, out=REPO / "runs" / "ablation", seeds=[0], scale="demo")
    parser.add_argument("--bundle", default="baseline", help="the bundle every arm trains")
    parser.add_argument("--folds", type=int, default=5, help="k of the k-fold split")
    parser.add_argument("--labelled-fraction", type=float, default=1.0, help="share of the training images labelled")
    parser.add_argument("--labelled-count", type=int, help="exactly this many labelled training images (stratified)")
    parser.add_argument(
        "--arm", dest="arms", action="append", nargs="+", metavar=("NAME", "KEY=VALUE"), help="an arm (repeatable)"
    )
    add_only_folds_argument(
        parser, "train and summarise only these folds of --folds (a long ablation fold by fold; merge_results.py joins)"
    )
    parser.add_argument(
        "--publish", dest="publish_to", type=Path, help="also write the summary here (e.g. scripts/results/x.json)"
    )
    arguments = parse_run_arguments(parser, argv)
    arguments["arms"] = parse_arms(arguments["arms"], arguments["bundle"])
    arguments["command"] = portable_command("scripts/ablate.py", sys.argv[1:] if argv is None else argv)
    return run_command(run_ablation, arguments)


if __name__ == "__main__":
    sys.exit(main())
