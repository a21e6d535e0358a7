#!/usr/bin/env python
"""Write the SYNTHETIC demo datasets: SIIM-ACR layout (DICOM + train-rle.csv) and a multi-domain set.

python scripts/make_demo_data.py --out demo_data/siim --n-images 200 --size 512 --seed 0 \\
    --multidomain-out demo_data/multidomain

The multi-domain set (CT volume, multi-frame MR, ultrasound, fundus, hand radiograph; all drawn)
comes with ``<multidomain-out>/datalist.json`` built by common.data.multidomain.build_multidomain_datalist,
whose image paths are absolute (the output folder resolved), so bundles can use it from anywhere.
Pass ``--multidomain-out ""`` to skip it.
"""

from __future__ import annotations

import argparse
import sys

from common.data.demo import make_demo_siim
from pipeline.multidomain import write_demo_multidomain


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and write the datasets."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_data/siim", help="output folder (SIIM-ACR layout; '' to skip it)")
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="image rows = columns (SIIM-ACR uses 1024)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--multidomain-out",
        default="demo_data/multidomain",
        help="output folder of the synthetic multi-domain set and its datalist.json ('' to skip it)",
    )
    args = parser.parse_args(argv)
    if args.out:
        out = make_demo_siim(args.out, n_images=args.n_images, size=args.size, seed=args.seed)
        print(f"wrote {args.n_images} synthetic images to {out} (see {out / 'README.txt'})")
    if args.multidomain_out:
        datalist = write_demo_multidomain(args.multidomain_out, seed=args.seed)
        counts = ", ".join(f"{k}={v}" for k, v in datalist["counts"]["domain"].items())
        print(f"wrote the synthetic multi-domain set to {args.multidomain_out} ({counts}) and its datalist.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
