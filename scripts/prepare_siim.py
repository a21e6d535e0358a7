#!/usr/bin/env python
"""Build a seeded MONAI datalist (training_labelled / training_unlabelled / validation / test).

SIIM-ACR download (dicom-images-train/ + train-rle.csv):
    python scripts/prepare_siim.py --siim-dir /data/siim --out /data/siim/datalist.json \\
        --labelled-fraction 0.1 --seed 0
A plain folder of images and masks of the same stem (PNG/JPEG/NIfTI, any size, gray or RGB):
    python scripts/prepare_siim.py --image-dir imgs/ --mask-dir masks/ --out datalist.json
With an unlabelled pool (folders of unlabelled images, searched recursively; repeatable):
    python scripts/prepare_siim.py --siim-dir /data/siim --out datalist.json --unlabelled-dir /data/archive

Pool images join ``training_unlabelled`` (each marked with its ``source`` folder); a pool image that copies
an image of the labelled dataset, or an earlier pool image, is dropped and counted (``common.data.pool``).

Every image and mask is decoded once to check it (use --workers to parallelise, --no-verify to
skip: masks of a folder are then read alone). The split is stratified by positive/negative: from
the CSV for SIIM-ACR, from the masks (any foreground) for folders. Bad input stops the run naming
each file or CSV line; --skip-bad leaves those items out and writes them to <out>.skipped.json
(and prints the count).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from common.data.datalist import DataValidationError, build_datalist, scan_folder, scan_siim
from common.data.pool import add_pool_arguments, with_pool
from common.utils.io import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, scan, verify, split and write the datalist; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--siim-dir", type=Path, help="SIIM-ACR folder with train-rle.csv and dicom-images-train/")
    source.add_argument("--image-dir", type=Path, help="folder of images (use with --mask-dir)")
    parser.add_argument("--mask-dir", type=Path, help="folder of masks named like their images")
    parser.add_argument("--out", type=Path, required=True, help="datalist JSON to write")
    parser.add_argument("--labelled-fraction", type=float, default=1.0, help="share of training images kept labelled")
    parser.add_argument("--seed", type=int, default=0, help="split seed: same seed, same split")
    add_pool_arguments(parser)
    parser.add_argument("--skip-bad", action="store_true", help="skip bad items and report them instead of failing")
    parser.add_argument(
        "--no-verify", action="store_true", help="decode no images (layout and CSV checks; folder masks still read)"
    )
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes for decoding")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.image_dir and not args.mask_dir:
        parser.error("--image-dir needs --mask-dir")
    try:
        scan = scan_siim(args.siim_dir) if args.siim_dir else scan_folder(args.image_dir, args.mask_dir)
        datalist = build_datalist(
            scan,
            labelled_fraction=args.labelled_fraction,
            seed=args.seed,
            skip_bad=args.skip_bad,
            verify=not args.no_verify,
            workers=args.workers,
        )
        datalist = with_pool(
            datalist, args.unlabelled_dir, args.pool_size, args.seed, skip_bad=args.skip_bad, workers=args.workers
        )
    except (DataValidationError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = args.out.with_name(args.out.name.removesuffix(".json") + ".skipped.json")
    pool = datalist.get("pool") or {}
    skipped = [*datalist["skipped"], *pool.get("skipped", [])]
    if skipped:
        atomic_write_json(report, {"count": len(skipped), "skipped": skipped})
        print(f"skipped {len(skipped)} bad item(s): listed in {report}")
    elif report.exists():
        report.unlink()  # a stale report from an earlier run would describe other data
    atomic_write_json(args.out, datalist)
    counts = ", ".join(f"{k}={v}" for k, v in datalist["counts"].items())
    print(f"wrote {args.out}: {counts}")
    if pool:
        sources = ", ".join(f"{name}={n}" for name, n in pool["used"].items())
        print(
            f"unlabelled pool: {pool['counts']['used']} image(s) used ({sources}) of {pool['counts']['found']} found, "
            f"{pool['counts']['dropped']} dropped as duplicates of labelled or pool images, "
            f"{pool['counts']['skipped']} skipped"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
