#!/usr/bin/env python
"""Aggregate unlabelled images of several domains into one multi-domain datalist (HSSL pre-training).

    python scripts/prepare_multidomain.py --source cxr=/data/cxr:xray --source brain=/data/mr:mr \\
        --source chest_ct=/data/ct:ct --out multidomain.json --stride 4

--source is NAME=PATH:GROUP (the group follows the last ':', so paths may contain ':'); groups are
xray, ct, mr, us, other. Every image file under PATH is decoded once (use --workers to parallelise):
2D files give one item, multi-frame DICOM and 3D NIfTI one item per frame/slice (every --stride,
NIfTI along RAS --axis), leaving out empty slices. Bad input stops the run naming the file or
source; --skip-bad leaves bad files out and lists them in <out>.skipped.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common.data.multidomain import CT_WINDOW
from pipeline.multidomain import parse_source, prepare


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, scan and decode every source, write the datalist; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", required=True, metavar="NAME=PATH:GROUP", help="a domain (repeat)")
    parser.add_argument("--out", type=Path, required=True, help="datalist JSON to write")
    parser.add_argument("--axis", type=int, default=2, help="RAS axis NIfTI volumes are sliced along (2: axial)")
    parser.add_argument("--stride", type=int, default=1, help="take every N-th frame/slice of volumes")
    parser.add_argument(
        "--min-foreground", type=float, default=0.05, help="leave out slices with less foreground (pixels > 0.1)"
    )
    parser.add_argument(
        "--ct-window", type=float, nargs=2, default=CT_WINDOW, metavar=("LOW", "HIGH"), help="CT HU window"
    )
    parser.add_argument("--skip-bad", action="store_true", help="skip bad files and report them instead of failing")
    parser.add_argument(
        "--exclude", nargs="*", default=[], metavar="GLOB", help="file names to leave out (e.g. '*mask*')"
    )
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes for decoding")
    args = parser.parse_args(argv)
    try:
        sources = [parse_source(s) for s in args.source]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = {k: v for k, v in vars(args).items() if k not in ("source", "out")}
    return prepare(sources, args.out, **{**options, "ct_window": tuple(args.ct_window)})


if __name__ == "__main__":
    sys.exit(main())
