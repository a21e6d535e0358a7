"""HSSL quality check: training from scratch vs single-domain vs multi-domain pre-training.

For every labelled fraction and seed: the protocol's seeded datalist, then ``baseline`` (from scratch),
``hssl_pretrain`` pre-trained on the single-domain aggregate (``single_domains``, e.g. the chest X-ray
folder, plus the target's training images) and ``hssl_pretrain`` pre-trained on the whole multi-domain
aggregate (plus the target's training images), each fine-tuned with the baseline recipe and evaluated
on the test split. Runs are resumable and run side by side like the protocol's. Writes
``<out>/comparison.json``; a published summary goes where the bundle READMEs read it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.paths import portable_path, write_results
from pipeline.report import stats
from pipeline.runner import Runner
from pipeline.setting import RunSetting
from pipeline.steps import Step, train_and_evaluate

ARMS = ("scratch", "single-domain", "multi-domain")
METRICS = ("dice", "dice_positive", "iou")


def arm_steps(
    setting: RunSetting, multidomain_datalist: Path, single_domains: Sequence[str], fraction: float, seed: int
) -> dict[str, Step]:
    """The three arms for one labelled fraction and seed."""
    seed_dir = setting.out / f"labelled{fraction:g}" / f"seed{seed}"
    data, datalist_sha = setting.seed_data(seed_dir, fraction, seed)
    hssl = {"multidomain_datalist": str(multidomain_datalist)}
    arms = {
        "scratch": ("baseline", {}),
        "single-domain": ("hssl_pretrain", {**hssl, "multidomain_domains": list(single_domains)}),
        "multi-domain": ("hssl_pretrain", hssl),
    }
    facts = {"datalist": datalist_sha}
    return {arm: setting.step(arm, bundle, seed_dir / arm, data, facts, extra) for arm, (bundle, extra) in arms.items()}


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


def collect(runs: list[tuple[float, int, str, Step]]) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """Per fraction, arm and seed: test and validation metrics and what the pre-training recorded."""
    per_seed: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for f, s, arm, step in runs:
        metrics = step.metrics
        per_seed.setdefault(str(f), {}).setdefault(arm, {})[s] = {
            "test": {m: metrics.evaluation("test").get(m) for m in METRICS},
            "val": {m: metrics.validation.get(m) for m in METRICS},
            "pretraining": {"epochs": metrics.pretraining.get("epochs"), "metrics": metrics.pretraining.get("metrics")},
        }
    return per_seed


def summarise(per_seed: dict[str, dict[str, dict[int, dict[str, Any]]]]) -> dict[str, Any]:
    """Mean/std over seeds of every test and validation metric, per fraction and arm."""
    return {
        f: {
            arm: {
                **{f"test_{m}": stats([r["test"][m] for r in seeds.values()]) for m in METRICS},
                **{f"val_{m}": stats([r["val"][m] for r in seeds.values()]) for m in METRICS},
            }
            for arm, seeds in arms.items()
        }
        for f, arms in per_seed.items()
    }


def run_comparison(
    dataset_dir: str | Path,
    multidomain_datalist: str | Path,
    out: str | Path,
    single_domains: Sequence[str] = ("cxr",),
    fractions: Sequence[float] = (0.1, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    scale: str = "demo",
    overrides: dict[str, Any] | None = None,
    jobs: int | None = None,
    force: bool = False,
    publish_to: str | Path | None = None,
) -> int:
    """Train and evaluate every arm; write (and with ``publish_to`` publish) and print the comparison."""
    setting = RunSetting(Path(dataset_dir), Path(out), scale, dict(overrides or {}), force=force)
    multidomain = Path(multidomain_datalist).resolve()
    if not multidomain.exists():
        raise SystemExit(f"error: {multidomain} does not exist")
    runner = Runner(jobs, 1, setting.out / "logs")
    start = time.time()
    runs = [
        (f, s, arm, step)
        for f in fractions
        for s in seeds
        for arm, step in arm_steps(setting, multidomain, single_domains, f, s).items()
    ]
    runner.run_all({f"[labelled {f:g} seed {s}] {arm}": partial(train_and_evaluate, runner, step, force)
                    for f, s, arm, step in runs})  # fmt: skip
    per_seed = collect(runs)
    results = {
        "settings": {
            "dataset": setting.dataset_dir.name,
            "multidomain_datalist": portable_path(multidomain_datalist),
            "single_domains": list(single_domains),
            "seeds": list(seeds),
            "scale": scale,
            "overrides": setting.preset,
            "wall_time_s": round(time.time() - start),
        },
        "summary": summarise(per_seed),
        "per_seed": per_seed,
    }
    write_results(setting.out / "comparison.json", results, "hssl_comparison", table(results), publish_to)
    return 0
