#!/usr/bin/env python
"""Write the SYNTHETIC demo dataset in the SIIM-ACR layout (DICOM + train-rle.csv).

python scripts/make_demo_data.py --out demo_data/siim --n-images 200 --size 512 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.demo_data import make_demo_siim


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and write the dataset."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_data/siim", help="output folder (SIIM-ACR layout)")
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="image rows = columns (SIIM-ACR uses 1024)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make_demo_siim(args.out, n_images=args.n_images, size=args.size, seed=args.seed)
    print(f"wrote {args.n_images} synthetic images to {out} (see {out / 'README.txt'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
