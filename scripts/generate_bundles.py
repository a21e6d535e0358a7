#!/usr/bin/env python
"""Generate the stage-1 and distillation bundles from the baseline bundle: one source of truth.

``bundles/baseline/configs/*.json`` is the template. For every auxiliary task registered in
``common.ssl`` the generator writes a joint bundle (``MultiTaskTrainer`` with an auxiliary loader)
and a pre-training bundle (a ``pretrain`` phase whose weights seed the baseline recipe), plus
``multitask_joint``, ``distill`` and ``mean_teacher`` (the semi-supervised competitor). A fix to
the data pipeline is made once in the baseline and reaches every bundle by re-running this script;
the output is committed, and ``--check`` (run by the tests) fails when it is out of date or when the
baseline's JSON is not in the generator's format. The code is ``pipeline/generate``.

    python scripts/generate_bundles.py          # write every generated bundle under bundles/
    python scripts/generate_bundles.py --check  # exit 1 if any generated file differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.generate import render_all
from pipeline.generate.sources import BUNDLES


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) every generated bundle."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the files on disk; write nothing")
    parser.add_argument(
        "--bundles-dir", type=Path, default=BUNDLES, help="output folder (default: the repo's bundles/)"
    )
    args = parser.parse_args(argv)
    stale = render_all(args.bundles_dir, check=args.check)
    root = args.bundles_dir
    if args.check:
        if stale:
            print(f"out of date in {root} (run python scripts/generate_bundles.py):\n  " + "\n  ".join(stale))
            return 1
        print("bundles up to date")
        return 0
    changed = sorted({s.split("/")[0] for s in stale})
    print(f"wrote {len(stale)} changed files under {root}" + (f": {', '.join(changed)}" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
