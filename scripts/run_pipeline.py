#!/usr/bin/env python
"""The whole two-stage protocol for one dataset, for one or several seeds, resumable.

Per seed: a seeded datalist (split and labelled subset), then the baseline, the ten stage-1 variants
and ``multitask_joint`` (independent: run side by side when the hardware allows), teacher selection,
distillation, then every model and the plain teacher ensemble evaluated on the held-out test split.
Everything is written under ``--out`` (bundles stay untouched: their ``ckpt_dir``/``log_dir``/
``output_dir`` are overridden), ending with ``report.md``, figures and ``results.json``.

    python scripts/run_pipeline.py --dataset-dir demo_data/siim --scale demo --out runs/demo
    python scripts/run_pipeline.py --dataset-dir /data/siim --labelled-fraction 0.1 --seeds 0 1 2 --out runs/siim10
    python scripts/run_pipeline.py --dataset-dir /data/siim --labelled-count 16 --folds 5 --seeds 0 1 \
        --unlabelled-dir /data/archive --external-test hospital=/data/hospital_cxr --scale small --out runs/siim16

Few labels, many unlabelled images: ``--unlabelled-dir`` (repeatable) adds a pool of unlabelled images
(DICOM/PNG/JPEG/NIfTI, searched recursively; ``--pool-size N`` a seeded subset) to every split's
``training_unlabelled`` (copies of labelled images dropped and counted: ``common.data.pool``); the
``*_pretrain`` variants then pre-train on the pool alone, once per seed, in ``<out>/pretrained/seed<S>/``
(``--pretrain-store DIR``: one store shared by the run folders of several labelled sizes), and every labelled
subset and fold of the seed reuses that ("reused" in the log; a changed pool or pretext setting retrains).
``--folds K``: stratified K-fold, every image tested once per seed; ``--labelled-count N``: N labelled training images
instead of ``--labelled-fraction``; ``--external-test NAME=DIR`` (repeatable; SIIM layout or
``images/`` + ``masks/``): every model and the teacher ensemble are also evaluated there (own columns).

Resuming: a training step is skipped when its ``metrics.json`` says ``complete``, records the same
fingerprint (bundle configs + overrides + datalist content; for the student also the teachers'
sha256) and its ``model.pt`` still has the sha256 training recorded (a changed or corrupt model is
retrained; ``--no-retrain`` stops instead). A training runs in ``<model>.partial/`` and replaces the
previous outputs only once it completed; an interrupted one with a matching fingerprint and a
``checkpoint_epoch=N.pt`` continues with ``--resume true``; an evaluation is skipped when its model
file is unchanged. Code changes are not part of the fingerprint: pass ``--force`` after changing
``common``. ``--dry-run`` prints that plan (and why) and writes nothing. A ``--set`` key no bundle of
the run has is an error that lists the known keys.

Hardware: ``--jobs N`` runs N independent bundles at once (default: one per GPU; without a GPU one
per CPU core, at most 6); each job sees one GPU (CUDA_VISIBLE_DEVICES) or its share of the CPU
threads. ``--nproc-per-bundle K`` instead trains each bundle with
``torchrun --nproc_per_node=K`` and its ``multi_gpu_train.json`` (one bundle at a time, all K GPUs).
The protocol itself: ``pipeline/protocol.py``.

Tracking: ``--tracking mlflow`` tracks every bundle command (an MLflow run per training or evaluation, named
as its log) and then the report (run ``report``: settings, headline metrics, report.md, results.json,
figures) in the run folder's local MLflow store ``<out>/mlruns`` (``pipeline/tracking.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.data.pool import add_pool_arguments
from common.ssl import list_tasks
from pipeline.arms import parse_arms
from pipeline.cli import add_only_folds_argument, add_run_arguments, parse_run_arguments
from pipeline.paths import REPO
from pipeline.protocol import run_protocol
from pipeline.tracking import log_report


def main(argv: list[str] | None = None) -> int:
    """Run the protocol for every seed, then write the report; print the results table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, out=REPO / "runs" / "pipeline", seeds=[0], scale="full")
    parser.add_argument("--labelled-fraction", type=float, default=0.2)
    parser.add_argument("--labelled-count", type=int, help="exactly N labelled training images (stratified)")
    parser.add_argument("--folds", type=int, help="stratified K-fold: every image tested once per seed")
    parser.add_argument(
        "--no-tuning",
        dest="tune",
        action="store_false",
        help="no post-processing tuning on validation (no tuned test columns; make demo: its 10 minutes)",
    )
    add_only_folds_argument(
        parser, "run and report only these folds of --folds (a long study fold by fold; the splits do not change)"
    )
    parser.add_argument(
        "--student-arm",
        dest="student_arms",
        action="append",
        nargs="+",
        metavar=("NAME", "KEY=VALUE"),
        help="a student variant trained from the same teachers beside the default one, e.g. "
        "'kd_t2_a05 temperature=2 alpha=0.5' (repeatable; a KD sweep; read it on validation)",
    )
    add_pool_arguments(parser, dest="unlabelled_dirs")
    parser.add_argument(
        "--pretrain-store",
        type=Path,
        help="where pool-only pre-trainings are kept and reused (default <out>/pretrained; share it between runs)",
    )
    parser.add_argument(
        "--external-test",
        dest="external",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="an external test set (SIIM layout or images/ + masks/), repeatable",
    )
    parser.add_argument("--tasks", nargs="+", default=list_tasks(), choices=list_tasks())
    parser.add_argument("--skip", nargs="*", default=[], help="bundle names to leave out (e.g. multitask_joint)")
    parser.add_argument("--nproc-per-bundle", type=int, default=1, help="torchrun processes per bundle")
    parser.add_argument("--skip-bad", action="store_true", help="skip (and list) unreadable images and bad rows")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be trained, resumed, reused, evaluated, and why; write nothing",
    )
    parser.add_argument(
        "--no-retrain",
        action="store_true",
        help="stop instead of replacing a completed model (changed settings or data, or a model.pt changed or corrupt)",
    )
    parser.add_argument(
        "--publish", dest="publish_to", type=Path, help="also write the summary here (scripts/results/<name>.json)"
    )
    parser.add_argument("--label", help="the published run's name in the bundle READMEs (default: --out's name)")
    parser.add_argument(
        "--install",
        dest="install_seed",
        type=int,
        metavar="SEED",
        help="then install this seed's models into bundles/*/models (as scripts/install_run.py does)",
    )
    parser.add_argument(
        "--tracking",
        choices=["mlflow"],
        help="track every bundle command and the report with MLflow in <out>/mlruns (local file store, no server)",
    )
    arguments = parse_run_arguments(parser, argv)
    arguments["external"] = external_tests(parser, arguments["external"])
    arguments["student_arms"] = parse_arms(arguments["student_arms"], None, option="--student-arm")
    argv = sys.argv[1:] if argv is None else argv
    arguments["tracking"] = bool(arguments["tracking"]) and not arguments["dry_run"]
    status = run_protocol(**arguments, argv=argv)
    if arguments["tracking"]:
        out = arguments["out"]
        print(f"mlflow: the report is run {log_report(out, argv)} in {out / 'mlruns'}")
    return status


def external_tests(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Path]:
    """``["site=/data/x"]`` -> {"site": Path("/data/x")}; a malformed or repeated name is a usage error."""
    out: dict[str, Path] = {}
    for item in items:
        name, eq, folder = item.partition("=")
        if not eq or not name or not folder or not name.replace("_", "").replace("-", "").isalnum():
            parser.error(f"--external-test expects NAME=DIR (NAME: letters, digits, - or _), got {item!r}")
        if name in out:
            parser.error(f"--external-test {name}: given twice")
        out[name] = Path(folder)
    return out


if __name__ == "__main__":
    sys.exit(main())
