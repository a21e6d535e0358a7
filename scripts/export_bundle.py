#!/usr/bin/env python
"""Export a trained bundle as a zoo-ready zip that runs on its own.

    python scripts/export_bundle.py bundles/baseline --out dist/
    python scripts/export_bundle.py bundles/baseline --out dist/ --onnx     # + models/model.onnx in the zip
    python scripts/export_bundle.py bundles/baseline --onnx --in-place      # models/model.onnx in the bundle

writes ``dist/<name>_v<version>.zip`` (version from ``configs/metadata.json``) unpacking to ``<name>/``:
``configs/``, ``docs/``, ``LICENSE``, ``models/model.pt`` and ``models/model.ts`` (TorchScript from MONAI's
``ckpt_export``), ``large_files.yml`` (files over ``--large-file-mb``, with sha256 and an empty ``url`` to
fill in when the zoo hosts them), ``MANIFEST.sha256`` and the repository's ``common`` package vendored as
``<name>/common``. Nothing else: no cache, logs, eval outputs, other checkpoints or ``__pycache__``.
It also records the zip in ``dist/model_info.json`` (``<name>_v<version>``: version, source, sha1), as the
MONAI model zoo does. The metadata must pass ``verify_metadata`` against the schema kept in
``common/deploy/schemas`` (offline) or nothing is written. Unpack received zips with
``common.deploy.zoo.extract_bundle``, which checks the sha1, the manifest and the checkpoints; how the
vendored ``common`` is found when the bundle runs: ``common/deploy/zoo.py``.

``--onnx`` adds ``models/model.onnx`` (opset 17, dynamic batch/height/width) and ``models/model.onnx.json``
(its parity record): the ONNX model is run in onnxruntime against PyTorch on ``--onnx-images`` (default: four
synthetic demo images) through the bundle's own pre- and post-processing, and the export stops with one line
unless the probabilities agree within 1e-4 and every mask is identical; the figures are printed.
``configs/inference_onnx.json`` then runs the bundle's inference through onnxruntime. ``--in-place`` writes
the two files into the bundle's ``models/`` instead of a zip (``common/deploy/onnx_export.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

from common.deploy.onnx_export import export_onnx, summary_line
from common.deploy.zoo import export_bundle
from common.utils.io import file_digest
from pipeline.paths import REPO


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and export; print the zip's path and sha1."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="bundle folder (configs/, docs/, LICENSE, models/model.pt)")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output folder (default: dist/)")
    parser.add_argument("--large-file-mb", type=float, default=25.0, help="list files above this in large_files.yml")
    parser.add_argument("--onnx", action="store_true", help="add models/model.onnx, checked against PyTorch")
    parser.add_argument("--onnx-images", type=Path, help="images for the ONNX check (default: 4 synthetic demo images)")
    parser.add_argument("--in-place", action="store_true", help="with --onnx: write into the bundle's models/, no zip")
    args = parser.parse_args(argv)
    if args.in_place and not args.onnx:
        parser.error("--in-place writes models/model.onnx: give --onnx too")
    try:
        if args.in_place:
            print(summary_line(export_onnx(args.bundle, args.onnx_images)))
            return 0
        zip_path = export_bundle(args.bundle, args.out, args.large_file_mb, args.onnx, args.onnx_images)
    except (FileNotFoundError, ValueError) as e:  # a missing model, invalid metadata, ONNX parity: no traceback
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    if args.onnx:
        with zipfile.ZipFile(zip_path) as zf:
            print(summary_line(json.loads(zf.read(f"{args.bundle.resolve().name}/models/model.onnx.json"))))
    print(f"{zip_path} sha1 {file_digest(zip_path, 'sha1')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
