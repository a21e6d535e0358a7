#!/usr/bin/env python
"""Serve a trained bundle with MONAI Label 0.8.5 on 127.0.0.1 in one command.

    make serve BUNDLE=distill IMAGES=/path/to/images [PORT=8000]
    .venv/bin/python scripts/serve_label.py --bundle distill --images /path/to/images [--port 8000]

checks the bundle (``models/model.pt`` trained and loadable), the images folder and the MONAI Label
environment (``.venv-label``: ``make label-venv``), deploys the bundle with the ``common`` package vendored
into MONAI Label's stock ``monaibundle`` app under ``runs/label_apps/<bundle>/`` (replacing an earlier
deployment; nothing is downloaded), prints the URL, the model name and an example request, runs the server
in the foreground and says when it is ready; Ctrl-C stops it (escalating to SIGKILL if it does not stop).
The image id of a request is the file name without extension. Runs in either environment (it needs torch,
not monailabel): ``make serve`` runs it in ``.venv-label`` with ``PYTHONPATH`` set to the repository (which
that environment does not install); the server always runs in ``.venv-label``, without PYTHONPATH. A failed
check prints one ``error:`` line and exits with 2. Details: common/deploy/label_app.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.deploy.label_app import Plan, ServeError, deploy, plan_serving, resolve_bundle, run_server
from pipeline.paths import BUNDLES, REPO


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number")
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="distill", help="a folder of bundles/ or a bundle path (default: distill)")
    parser.add_argument("--images", required=True, help="folder of images (PNG, JPEG, DICOM, ...) to serve")
    parser.add_argument("--port", type=_port, default=8000, help="port on 127.0.0.1 (default: 8000)")
    parser.add_argument(
        "--apps-dir", type=Path, default=REPO / "runs" / "label_apps", help="deployments (default: runs/label_apps)"
    )
    parser.add_argument(
        "--label-python", type=Path, default=REPO / ".venv-label" / "bin" / "python", help="MONAI Label's Python"
    )
    parser.add_argument("--skip-trainers", action="store_true", help="serve only: no /train for the model")
    parser.add_argument("--dry-run", action="store_true", help="run the checks, print the command, write nothing")
    return parser


def describe(plan: Plan) -> str:
    """What a user needs: URL, model name, the image-id rule with a real id, an example request."""
    first = next(iter(plan.image_ids))
    return "\n".join(
        [
            f"MONAI Label serves bundle {plan.source} as model '{plan.name}' (deployed to {plan.bundle})",
            f"images: {plan.images} ({len(plan.image_ids)} images); the image id is the file name without extension,"
            f" e.g. '{first}' for {plan.image_ids[first]}",
            f"URL: {plan.url}  (a 'ready:' line follows when the server answers; Ctrl-C stops it)",
            f"example: {plan.example_request()}",
            "errors: an unknown image id gets HTTP 404 naming it, a failed inference HTTP 500 with the reason;"
            f" the server log (here, and {plan.app / 'logs' / 'app.log'}) has the details",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Check, deploy, describe, then run the server (or print its command with ``--dry-run``)."""
    args = _parser().parse_args(argv)
    try:
        if not args.images:
            raise ServeError("no images folder given: --images DIR (make serve IMAGES=DIR)")
        bundle = resolve_bundle(args.bundle, BUNDLES)
        plan = plan_serving(
            bundle, Path(args.images), args.apps_dir, args.label_python, args.port, skip_trainers=args.skip_trainers
        )
    except ServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(describe(plan), flush=True)
    if args.dry_run:
        print(f"command: {plan.shell_command()}")
        return 0
    deploy(plan)
    return run_server(plan, lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main())
