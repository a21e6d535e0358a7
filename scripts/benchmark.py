#!/usr/bin/env python
"""Training throughput of the baseline bundle's trainer against a minimal hand-written PyTorch loop.

Both run side by side in one process on the same machine, with the same network, loss,
optimiser, batch size and resolution. The bundle runs its real config (PersistentDataset,
augmentations, DataLoader workers, SupervisedTrainer and handlers); epoch 1 fills the cache
and epoch 2 is measured. The hand loop trains on the same images already stacked in memory, so
it is the compute ceiling; it runs after every measured bundle epoch for as many steps, and
medians are compared. Printed: images/s of each, their ratio (target >= 0.9), and the share
of the bundle's epoch-2 time spent waiting for a batch (target <= 10%), with the CPU load from
other processes measured over each run (figures taken while the machine was busy are flagged).
The measurements: ``pipeline/benchmark.py``.

    python scripts/benchmark.py --image-size 256 --batch-size 8 --workers 0 1 2
    python scripts/benchmark.py --only distill   # distillation epoch: cached vs online vs baseline
    python scripts/benchmark.py --only inference --repeats 5   # torch eager vs TorchScript vs onnxruntime
    python scripts/benchmark.py --only precision --repeats 2   # fp32 vs bf16 vs channels-last vs compiled
    python scripts/benchmark.py --only inference-loop --repeats 3   # inference.json vs a raw torch loop

``--only inference`` times the baseline network (seeded random weights: speed, not quality) per image,
batch 1 as ``configs/inference.json``, at ``--image-size`` and at the installed baseline model's image
size: torch eager, the TorchScript ``model.ts`` and onnxruntime's CPU provider on ``model.onnx`` (both as
``scripts/export_bundle.py --onnx`` makes them), the same images and thread count for all three.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.benchmark import run_benchmark
from pipeline.paths import REPO


def main(argv: list[str] | None = None) -> int:
    """Run both measurements for each worker count and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", type=Path, default=REPO / "demo_data" / "siim")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts to measure")
    parser.add_argument(
        "--repeats", type=int, default=4, help="measured epochs (after one warm-up epoch); inference: passes"
    )
    parser.add_argument(
        "--stage1", action="store_true", help="also time every joint bundle's step against the baseline"
    )
    parser.add_argument("--distill", action="store_true", help="also time distillation epochs (cached, online)")
    parser.add_argument("--teachers", type=int, default=5, help="teachers in the distillation benchmark")
    parser.add_argument("--aux-batch-size", type=int, help="stage-1 table: the joint bundles' auxiliary batch")
    parser.add_argument(
        "--only",
        choices=["stage1", "distill", "inference", "inference-loop", "precision"],
        help="run only that table",
    )
    return run_benchmark(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
