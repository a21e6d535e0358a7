#!/usr/bin/env python
"""The main job on the embedded demo data, as a user would run it: train, evaluate, infer.

Runs the baseline bundle through ``python -m monai.bundle run`` (train.json, then
train.json + evaluate.json on the test split, then inference.json on every demo DICOM) at the demo
scale, and prints the metrics and where everything was written.
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
from common.datalist import load_or_build_datalist  # noqa: E402

BUNDLE = REPO / "bundles" / "baseline"


def bundle_run(configs: list[str], *overrides: str) -> None:
    """Run ``python -m monai.bundle run`` on the baseline's configs with overrides; raise on failure."""
    files = [str(BUNDLE / "configs" / c) for c in configs]
    config_arg = files[0] if len(files) == 1 else repr(files)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg, *overrides]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate and infer with the baseline on the demo data; print a summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset-dir", default=str(REPO / "demo_data" / "siim"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args(argv)
    common = ["--dataset_dir", args.dataset_dir, "--image_size", str(args.image_size)]
    start = time.time()
    bundle_run(["train.json"], *common, "--epochs", str(args.epochs))
    bundle_run(["train.json", "evaluate.json"], *common)
    out = BUNDLE / "eval" / "inference"
    images = str(Path(args.dataset_dir) / "dicom-images-train")
    bundle_run(
        ["inference.json"],
        "--input_dir",
        images,
        "--output_dir",
        str(out),
        "--image_size",
        str(args.image_size),
    )
    metrics = json.loads((BUNDLE / "models" / "metrics.json").read_text())
    test = load_or_build_datalist(args.dataset_dir)["test"]
    empty_score = sum(not item["rle"] for item in test) / len(test)
    print(f"\nbaseline on {args.dataset_dir} ({time.time() - start:.0f} s)")
    for section in ("validation", "test"):
        m = metrics.get(section) or {}
        print(f"  {section:<10} dice={m.get('dice')} dice_positive={m.get('dice_positive')} iou={m.get('iou')}")
    print(f"  (predicting an empty mask everywhere would score test dice={empty_score:.3f})")
    print(f"  weights: {BUNDLE / 'models' / 'model.pt'}\n  metrics: {BUNDLE / 'models' / 'metrics.json'}")
    print(f"  masks:   {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
