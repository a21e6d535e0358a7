#!/usr/bin/env python
"""Small sweep of each joint task's lambda; writes the table the bundle generator reads.

Trains the baseline and every ``<task>_joint`` bundle for each lambda in ``--lambdas`` through
``python -m monai.bundle run`` (outputs under ``--runs-dir``, never in the bundles), at one
labelled fraction, resolution, epoch count and seed, and records the best validation metrics of
each run in ``--out`` (default ``scripts/lambda_sweep.json``). ``scripts/generate_bundles.py``
takes each task's default lambda from that file (highest validation Dice) and prints the sweep in
the bundle's README.

    python scripts/sweep_lambda.py --dataset-dir demo_data/siim --labelled-fraction 0.2 --epochs 100
    python scripts/sweep_lambda.py --pretrain-only   # then the five pre-training bundles, same setting
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.io import atomic_write_json  # noqa: E402

TASKS = ("rotation", "jigsaw", "inpainting", "genesis", "contrastive")


def train(bundle: str, root: Path, overrides: list[str]) -> dict:
    """Train one bundle into ``root`` and return its best validation metrics."""
    config = REPO / "bundles" / bundle / "configs" / "train.json"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config), "--bundle_root", str(root)]
    log = root / "train.log"
    root.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        subprocess.run([*cmd, *overrides], check=True, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    return json.loads((root / "models" / "metrics.json").read_text())["validation"]


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", type=Path, default=REPO / "demo_data" / "siim")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "lambda_sweep")
    parser.add_argument("--out", type=Path, default=REPO / "scripts" / "lambda_sweep.json")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--labelled-fraction", type=float, default=0.2)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=100, help="few labels mean few steps per epoch")
    parser.add_argument("--val-interval", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pretrain-only",
        action="store_true",
        help="instead of the sweep: train every <task>_pretrain bundle at the sweep's setting and add the results",
    )
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    args = parser.parse_args(argv)
    setting = {
        "dataset_dir": str(args.dataset_dir.resolve()),
        "labelled_fraction": args.labelled_fraction,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "val_interval": args.val_interval,
        "seed": args.seed,
    }
    overrides = [
        "--dataset_dir", setting["dataset_dir"], "--labelled_fraction", str(args.labelled_fraction),
        "--image_size", str(args.image_size), "--epochs", str(args.epochs), "--seed", str(args.seed),
        "--val_interval", str(args.val_interval),
        "--split_seed", str(args.seed), "--cache_dir", str(args.runs_dir / "cache"),
    ]  # fmt: skip
    start = time.time()
    if args.pretrain_only:
        results = json.loads(args.out.read_text())
        if results["setting"] != setting:
            raise SystemExit(f"{args.out} was swept with {results['setting']}, not {setting}")
        results["pretrain"] = {"pretrain_epochs": args.pretrain_epochs, "tasks": {}}
        for task in args.tasks:
            extra = ["--pretrain_epochs", str(args.pretrain_epochs)]
            metrics = train(f"{task}_pretrain", args.runs_dir / f"{task}_pretrain", [*overrides, *extra])
            results["pretrain"]["tasks"][task] = metrics
            print(f"{task} pretrain: {metrics}", flush=True)
        results["pretrain"]["wall_s"] = round(time.time() - start)
        atomic_write_json(args.out, results)
        print(f"updated {args.out}")
        return 0
    results = {"setting": setting, "baseline": train("baseline", args.runs_dir / "baseline", overrides), "tasks": {}}
    print(f"baseline: {results['baseline']}", flush=True)
    for task in args.tasks:
        runs = []
        for lam in args.lambdas:
            weights = json.dumps({task: lam})
            metrics = train(
                f"{task}_joint", args.runs_dir / f"{task}_joint_{lam}", [*overrides, "--aux_weights", weights]
            )
            runs.append({"lambda": lam, **metrics})
            print(f"{task} lambda={lam}: {metrics}", flush=True)
        results["tasks"][task] = runs
    results["wall_s"] = round(time.time() - start)
    atomic_write_json(args.out, results)
    print(f"wrote {args.out} ({results['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
