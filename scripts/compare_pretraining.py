#!/usr/bin/env python
"""HSSL quality check: training from scratch vs single-domain vs multi-domain pre-training.

For every labelled fraction and seed: the seeded datalist of ``scripts/run_pipeline.py``, then
``baseline`` (from scratch), ``hssl_pretrain`` pre-trained on the single-domain aggregate
(``--single-domains``, e.g. the chest X-ray folder, plus the target's training images) and
``hssl_pretrain`` pre-trained on the whole multi-domain aggregate (plus the target's training
images), each fine-tuned with the baseline recipe and evaluated on the test split. Runs are
resumable and run side by side like the pipeline's. Writes ``<out>/comparison.json`` and prints
the table; ``--publish FILE`` also writes the summary there (``scripts/results/`` is what the
bundle READMEs show). The comparison itself: ``pipeline/compare.py``.

    python scripts/compare_pretraining.py --dataset-dir ../shared/data/cxr_lungs \\
        --multidomain-datalist runs/multidomain.json --single-domains cxr --fractions 0.1 1.0 \\
        --seeds 0 1 2 --scale demo --set epochs=60 pretrain_epochs=20 --out runs/hssl_quality
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli import add_run_arguments, parse_run_arguments, run_command
from pipeline.compare import run_comparison
from pipeline.paths import REPO


def main(argv: list[str] | None = None) -> int:
    """Train and evaluate every arm; write and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, out=REPO / "runs" / "hssl_quality", seeds=[0, 1, 2], scale="demo", dataset_required=True)
    parser.add_argument("--multidomain-datalist", type=Path, required=True)
    parser.add_argument("--single-domains", nargs="+", default=["cxr"], help="the single-domain arm's domains")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument(
        "--publish", dest="publish_to", type=Path, help="also write the summary here (e.g. scripts/results/x.json)"
    )
    return run_command(run_comparison, parse_run_arguments(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
