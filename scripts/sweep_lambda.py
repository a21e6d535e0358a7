#!/usr/bin/env python
"""Sweep each joint task's lambda over several seeds; writes the table the bundle generator reads.

For every seed: the seeded datalist of ``scripts/run_pipeline.py``, the baseline, and every
``<task>_joint`` bundle once per lambda in ``--lambdas`` (``--aux_weights "{'<task>': lambda}"``),
trained through ``python -m monai.bundle run`` under ``--out`` (bundles stay untouched), several at
a time, resumable like the pipeline (the same fingerprints). The best validation metrics of every
run, their mean and standard deviation over the seeds go to ``--table`` (default
``scripts/lambda_sweep.json``); ``scripts/generate_bundles.py`` takes each task's default lambda
from it (highest mean validation Dice, the smaller lambda on a tie) and prints the sweep in the
bundle's README. A table swept at the same setting keeps the tasks not swept this time.

    python scripts/sweep_lambda.py --dataset-dir ../shared/data/cxr_lungs --labelled-fraction 0.2 \\
        --seeds 0 1 2 --scale demo --set epochs=60 --out runs/lambda_sweep
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.utils.io import atomic_write_json  # noqa: E402
from common.utils.metrics import read_metrics_file  # noqa: E402
from pipeline.report import stats  # noqa: E402
from scripts.generate_bundles import ALL_TASKS  # noqa: E402
from scripts.run_pipeline import (  # noqa: E402
    BUNDLES,
    SCALES,
    Runner,
    Step,
    _parse_set,
    default_jobs,
    output_overrides,
    seed_datalist,
    seed_overrides,
    train_step,
)

METRICS = ("dice", "dice_positive", "iou")


def sweep_steps(args: argparse.Namespace, seed: int) -> list[tuple[str, float | None, Step]]:
    """(task, lambda, step) for the seed: the baseline (task "baseline", lambda None) and every joint run."""
    seed_dir = args.out / f"seed{seed}"
    datalist_sha = seed_datalist(
        args.dataset_dir, args.labelled_fraction, seed, args.skip_bad, seed_dir / "datalist.json"
    )
    common = seed_overrides(args, seed_dir / "datalist.json", args.labelled_fraction, seed)
    common.pop("pretrain_epochs", None)

    def step(name: str, bundle: str, extra: dict[str, Any]) -> Step:
        out = seed_dir / name
        overrides = {**common, **output_overrides(out), **extra}
        return Step(name, BUNDLES / bundle, out, overrides, {"datalist": datalist_sha})

    steps: list[tuple[str, float | None, Step]] = [("baseline", None, step("baseline", "baseline", {}))]
    for task in args.tasks:
        for lam in args.lambdas:
            run = step(f"{task}_joint_lambda{lam:g}", f"{task}_joint", {"aux_weights": {task: lam}})
            steps.append((task, lam, run))
    return steps


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation of each metric over the seeds, plus the per-seed values."""
    out: dict[str, Any] = {"n": len(runs), "seeds": runs}
    for metric in METRICS:
        stat = stats([r.get(metric) for r in runs])
        out[metric], out[f"{metric}_std"] = stat["mean"], stat["std"]
    return out


def same_setting(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same data, labels, seeds and scale, and no override set differently in both (a task-only one, such
    as HSSL's multidomain_datalist, may be given to one sweep alone)."""
    keys = ("dataset", "labelled_fraction", "seeds", "scale")
    if not a or any(a.get(k) != b.get(k) for k in keys):
        return False
    oa, ob = a.get("overrides", {}), b.get("overrides", {})
    return all(oa[k] == ob[k] for k in set(oa) & set(ob))


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", type=Path, default=REPO / "demo_data" / "siim")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "lambda_sweep", help="run folder")
    parser.add_argument("--table", type=Path, default=REPO / "scripts" / "lambda_sweep.json")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--tasks", nargs="+", default=list(ALL_TASKS), choices=list(ALL_TASKS))
    parser.add_argument("--labelled-fraction", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scale", choices=sorted(SCALES), default="demo")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides (JSON values)")
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (default: as run_pipeline.py)")
    parser.add_argument("--skip-bad", action="store_true")
    parser.add_argument("--force", action="store_true", help="retrain every run")
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    args.set = _parse_set(args.set)
    args.out, args.dataset_dir = args.out.resolve(), args.dataset_dir.resolve()
    if not args.dataset_dir.is_dir():
        raise SystemExit(f"error: dataset folder {args.dataset_dir} does not exist")
    runner = Runner(args.jobs or default_jobs(), 1, args.out / "logs")
    start = time.time()
    runs = [(seed, *s) for seed in args.seeds for s in sweep_steps(args, seed)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=runner.jobs) as pool:
        futures = {pool.submit(train_step, runner, s, args.force): (seed, s) for seed, _, _, s in runs}
        for future in concurrent.futures.as_completed(futures):
            seed, s = futures[future]
            print(f"[seed {seed}] {s.name}: {future.result()}")
    results: dict[str, list[dict[str, Any]]] = {}
    for _seed, task, lam, s in runs:
        best = read_metrics_file(s.metrics_file).get("validation")
        if not best:
            raise SystemExit(f"error: {s.metrics_file} has no validation result (epochs < val_interval?)")
        results.setdefault(f"{task}|{lam}", []).append({m: best.get(m) for m in METRICS})
    table = {
        "setting": {
            "dataset": args.dataset_dir.name,
            "labelled_fraction": args.labelled_fraction,
            "seeds": args.seeds,
            "scale": args.scale,
            "overrides": {k: v for k, v in {**SCALES[args.scale], **args.set}.items() if k != "pretrain_epochs"},
        },
        "baseline": summarise(results["baseline|None"]),
        "tasks": {
            task: [{"lambda": lam, **summarise(results[f"{task}|{lam}"])} for lam in args.lambdas]
            for task in args.tasks
        },
        "wall_s": round(time.time() - start),
    }
    previous = json.loads(args.table.read_text()) if args.table.is_file() else {}
    if same_setting(previous.get("setting") or {}, table["setting"]):  # keep the tasks swept before
        table["tasks"] = {**previous.get("tasks", {}), **table["tasks"]}
        table["setting"]["overrides"] = {**previous["setting"]["overrides"], **table["setting"]["overrides"]}
    atomic_write_json(args.table, table)
    base = table["baseline"]
    print(f"baseline: val dice {base['dice']:.3f} ± {base['dice_std']:.3f}")
    for task, rows in table["tasks"].items():
        for row in rows:
            print(f"{task} lambda={row['lambda']:g}: val dice {row['dice']:.3f} ± {row['dice_std']:.3f}")
    print(f"wrote {args.table} ({table['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
