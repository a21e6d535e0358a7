#!/usr/bin/env python
"""HSSL quality check: training from scratch vs single-domain vs multi-domain pre-training.

For every labelled fraction and seed: the seeded datalist of ``scripts/run_pipeline.py``, then
``baseline`` (from scratch), ``hssl_pretrain`` pre-trained on the single-domain aggregate
(``--single-domains``, e.g. the chest X-ray folder, plus the target's training images) and
``hssl_pretrain`` pre-trained on the whole multi-domain aggregate (plus the target's training
images), each fine-tuned with the baseline recipe and evaluated on the test split. Runs are
resumable and run side by side like the pipeline's. Writes ``<out>/comparison.json`` and prints
the table; ``--publish FILE`` also writes the summary there (``scripts/results/`` is what the
bundle READMEs show).

    python scripts/compare_pretraining.py --dataset-dir ../shared/data/cxr_lungs \\
        --multidomain-datalist runs/multidomain.json --single-domains cxr --fractions 0.1 1.0 \\
        --seeds 0 1 2 --scale demo --set epochs=60 pretrain_epochs=20 --out runs/hssl_quality
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.utils.io import atomic_write_json  # noqa: E402
from common.utils.metrics import read_metrics_file  # noqa: E402
from pipeline.report import stats  # noqa: E402
from scripts.run_pipeline import (  # noqa: E402
    BUNDLES,
    SCALES,
    Runner,
    Step,
    _parse_set,
    default_jobs,
    evaluate_step,
    output_overrides,
    seed_datalist,
    seed_overrides,
    train_step,
)

ARMS = ("scratch", "single-domain", "multi-domain")
METRICS = ("dice", "dice_positive", "iou")


def arm_steps(args: argparse.Namespace, fraction: float, seed: int) -> dict[str, Step]:
    """The three arms for one labelled fraction and seed."""
    seed_dir = args.out / f"labelled{fraction:g}" / f"seed{seed}"
    datalist_sha = seed_datalist(args.dataset_dir, fraction, seed, False, seed_dir / "datalist.json")
    common = seed_overrides(args, seed_dir / "datalist.json", fraction, seed)
    hssl = {"multidomain_datalist": str(args.multidomain_datalist)}
    arms = {
        "scratch": ("baseline", {}),
        "single-domain": ("hssl_pretrain", {**hssl, "multidomain_domains": list(args.single_domains)}),
        "multi-domain": ("hssl_pretrain", hssl),
    }
    steps = {}
    for arm, (bundle, extra) in arms.items():
        out = seed_dir / arm
        overrides = {**common, **extra, **output_overrides(out)}
        if bundle == "baseline":
            overrides.pop("pretrain_epochs", None)
        steps[arm] = Step(f"{arm}", BUNDLES / bundle, out, overrides, {"datalist": datalist_sha})
    return steps


def _run(runner: Runner, step: Step, force: bool) -> str:
    return f"{train_step(runner, step, force)}, {evaluate_step(runner, step)}"


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per (fraction, arm), test metrics mean ± std over seeds."""
    lines = ["| labelled | pre-training | test dice | test dice (positive) | test IoU |", "|---|---|---|---|---|"]
    for fraction, arms in results["summary"].items():
        for arm, s in arms.items():
            cells = [
                "-" if s[m]["mean"] is None else f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}"
                for m in ("test_dice", "test_dice_positive", "test_iou")
            ]
            lines.append(f"| {float(fraction):.0%} | {arm} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Train and evaluate every arm; write and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", type=Path, required=True)
    parser.add_argument("--multidomain-datalist", type=Path, required=True)
    parser.add_argument("--single-domains", nargs="+", default=["cxr"], help="the single-domain arm's domains")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scale", choices=sorted(SCALES), default="demo")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides (JSON values)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "hssl_quality")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--publish", type=Path, help="also write the summary here (e.g. scripts/results/x.json)")
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    args.set = _parse_set(args.set)
    args.out, args.dataset_dir = args.out.resolve(), args.dataset_dir.resolve()
    args.multidomain_datalist = args.multidomain_datalist.resolve()
    for path in (args.dataset_dir, args.multidomain_datalist):
        if not path.exists():
            raise SystemExit(f"error: {path} does not exist")
    runner = Runner(args.jobs or default_jobs(), 1, args.out / "logs")
    start = time.time()
    runs = [
        (f, s, arm, step) for f in args.fractions for s in args.seeds for arm, step in arm_steps(args, f, s).items()
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=runner.jobs) as pool:
        futures = {pool.submit(_run, runner, step, args.force): (f, s, arm) for f, s, arm, step in runs}
        for future in concurrent.futures.as_completed(futures):
            f, s, arm = futures[future]
            print(f"[labelled {f:g} seed {s}] {arm}: {future.result()}")
    per_seed: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for f, s, arm, step in runs:
        metrics = read_metrics_file(step.metrics_file)
        pre = metrics.get("pretraining") or {}
        per_seed.setdefault(str(f), {}).setdefault(arm, {})[s] = {
            "test": {m: (metrics.get("test") or {}).get(m) for m in METRICS},
            "val": {m: (metrics.get("validation") or {}).get(m) for m in METRICS},
            "pretraining": {"epochs": pre.get("epochs"), "metrics": pre.get("metrics")},
        }
    summary = {
        f: {
            arm: {
                **{f"test_{m}": stats([r["test"][m] for r in seeds.values()]) for m in METRICS},
                **{f"val_{m}": stats([r["val"][m] for r in seeds.values()]) for m in METRICS},
            }
            for arm, seeds in arms.items()
        }
        for f, arms in per_seed.items()
    }
    results = {
        "settings": {
            "dataset": args.dataset_dir.name,
            "multidomain_datalist": str(args.multidomain_datalist),
            "single_domains": args.single_domains,
            "seeds": args.seeds,
            "scale": args.scale,
            "overrides": {**SCALES[args.scale], **args.set},
            "wall_time_s": round(time.time() - start),
        },
        "summary": summary,
        "per_seed": per_seed,
    }
    atomic_write_json(args.out / "comparison.json", results)
    if args.publish:
        published = {"kind": "hssl_comparison", **{k: v for k, v in results.items() if k != "per_seed"}}
        atomic_write_json(args.publish, {**published, "table": table(results)})
    print(table(results))
    print(f"wrote {args.out / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
