#!/usr/bin/env python
"""Install one seed of a pipeline run into the bundles (``bundles/<name>/models/``).

Each bundle gets the run's ``model.pt`` and ``metrics.json``; ``distill`` also gets a ``teachers.json``
that points at the installed teachers. A different model already in a bundle is kept under
``models/backup-<time>/`` (printed), never overwritten. ``run_pipeline.py --install SEED`` does the same.

    python scripts/install_run.py runs/demo/seed0
    python -m monai.bundle run --config_file bundles/distill/configs/train.json   # then works
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.install import InstallError, install_run
from pipeline.paths import BUNDLES


def main(argv: list[str] | None = None) -> int:
    """Install, print one line per bundle; a one-line error (exit 2) when the run cannot be installed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("seed_dir", type=Path, help="a pipeline run's seed folder, e.g. runs/demo/seed0")
    parser.add_argument("--bundles-dir", type=Path, default=BUNDLES, help="where the bundles are (default: bundles/)")
    args = parser.parse_args(argv)
    try:
        lines = install_run(args.seed_dir, args.bundles_dir)
    except InstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
