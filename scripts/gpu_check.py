#!/usr/bin/env python
"""The prepared GPU check: run it once on a CUDA machine (``make gpu-check``; a few minutes on one GPU).

Every bundle for one short epoch under AMP (fp16 with GradScaler, and bf16): finite loss, loadable checkpoint;
``torchrun`` with NCCL over all GPUs for the baseline and a joint bundle (skipped on one GPU); the baseline
trainer against a hand-written loop per precision (img/s, share of the step waiting for data, peak GPU memory).
Everything goes to one JSON. Without CUDA it says "no CUDA: GPU checks skipped" per item and runs what a CPU
can (bf16 autocast and channels-last through the same trainer). The checks: ``pipeline/gpu_check.py``.

    python scripts/gpu_check.py --out runs/gpu_check.json
    python scripts/gpu_check.py --bundles baseline distill   # a subset of the AMP items
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.gpu_check import run_gpu_check


def main(argv: list[str] | None = None) -> int:
    """Run every check; exit 1 when one failed (skipped items do not count)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check.json"), help="the JSON written")
    parser.add_argument("--bundles", nargs="+", help="bundles of the AMP items (default: every bundle)")
    parser.add_argument("--data", type=Path, help="a folder with siim/ and multidomain/ demo data (default: made)")
    args = parser.parse_args(argv)
    record = run_gpu_check(args.out, args.bundles, args.data)
    return 1 if record["summary"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
