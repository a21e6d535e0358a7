#!/usr/bin/env python
"""The few-label study's learning curve from its published summaries, one per labelled size.

Reads the ``scripts/results/siim_real_n*.json`` files that ``run_pipeline.py --labelled-count N --publish``
wrote (and the baseline-alone ``scripts/ablate.py --labelled-count N --arm baseline --publish`` summaries,
``siim_real_baseline_n*.json``), plots test Dice (images with a lesion; competition rule) against the number
of labelled images, one line per model family with a ± std band over folds x seeds, and prints the table.
``pipeline/learning_curve.py``.

    python scripts/learning_curve.py scripts/results/siim_real_n*.json scripts/results/siim_real_baseline_n*.json \
        --out runs/study/learning_curve.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.learning_curve import load, plot, table


def main(argv: list[str] | None = None) -> int:
    """Plot and print; a summary without a labelled count, or two of one size, stops with one line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "results", type=Path, nargs="+", help="published summaries (per size: one pipeline run, one baseline ablation)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/study/learning_curve.png"), help="the figure")
    args = parser.parse_args(argv)
    try:
        results = load(args.results)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args.out)
    print(table(results, "test_dice_positive"), table(results, "test_dice"), sep="\n\n")
    print(f"\nfigure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
