"""A k-fold ablation of one bundle's settings: named override sets ("arms") trained on the same folds.

For every seed and fold: the fold's stratified datalist (``<out>/seed{s}/fold{k}/datalist.json``: the fold is
the test set, the other folds train and validate), then one run of the bundle per arm in
``<out>/seed{s}/fold{k}/<arm>``, evaluated on the fold. Runs are resumable, fingerprinted and run side by
side like the protocol's. Every image is tested once per seed, so the means over folds x seeds use every
image. Writes ``<out>/ablation.json``; a published summary goes where the bundle READMEs read it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pipeline import compute
from pipeline.arms import check_arms
from pipeline.paths import portable, write_results
from pipeline.report import BLANK_POSITIVE_DICE, arithmetic_line, collect_arithmetic, stats
from pipeline.runner import Runner
from pipeline.setting import RunSetting
from pipeline.steps import Step, train_and_evaluate

NOT_METRICS = ("n_images", "best_epoch")  # numbers of an evaluation section that are no metric
SHOWN = ("dice", "dice_positive", "iou")  # the metrics shown first (the test columns of the table)


def check_arguments(
    folds: int, labelled_fraction: float, labelled_count: int | None, only_folds: Sequence[int] = ()
) -> None:
    """Stop (``SystemExit``) on options no data could satisfy (the data checks the rest)."""
    if folds < 2:
        raise SystemExit(f"error: --folds must be at least 2, got {folds}")
    bad = [f for f in only_folds if not 0 <= f < folds]
    if bad:
        raise SystemExit(f"error: --only-folds {bad[0]}: not a fold of --folds {folds} (0 to {folds - 1})")
    if not 0.0 < labelled_fraction <= 1.0:
        raise SystemExit(f"error: --labelled-fraction must be in (0, 1], got {labelled_fraction}")
    if labelled_count is not None and labelled_count < 1:
        raise SystemExit(f"error: --labelled-count must be at least 1, got {labelled_count}")


def fold_data(
    setting: RunSetting, seed: int, fold: int, folds: int, fraction: float, count: int | None
) -> tuple[dict[str, Any], str]:
    """The fold's datalist (written once) as :meth:`RunSetting.seed_data` returns it; stops when the file
    there was built with other split options, or the options do not fit the data."""
    fold_dir = setting.out / f"seed{seed}" / f"fold{fold}"
    wanted = {"folds": folds, "fold": fold, "labelled_fraction": fraction, "labelled_count": count}
    datalist_file = fold_dir / "datalist.json"
    if datalist_file.is_file():
        recorded = json.loads(datalist_file.read_text())
        found = {k: recorded.get(k) for k in wanted}
        if found != wanted:
            raise SystemExit(
                f"error: {datalist_file} was built with {found}, this run asks for {wanted}: "
                "use another --out (or delete the folder)"
            )
    try:
        return setting.seed_data(fold_dir, fraction, seed, folds=folds, fold=fold, labelled_count=count)
    except ValueError as e:  # options that do not fit this data (more folds than images, too many labelled)
        raise SystemExit(f"error: {e}") from None


def ran_folds(folds: int, only_folds: Sequence[int] = ()) -> list[int]:
    """The folds a run trains: ``only_folds`` (sorted, once each) when given, else all ``folds``."""
    return sorted(set(only_folds)) if only_folds else list(range(folds))


def ablation_steps(
    setting: RunSetting,
    bundle: str,
    arms: Mapping[str, dict[str, Any]],
    seeds: Sequence[int],
    folds: int,
    fraction: float,
    count: int | None,
    only_folds: Sequence[int] = (),
) -> list[tuple[int, int, str, Step]]:
    """(seed, fold, arm, step) for every run (of ``only_folds`` when given); the fold datalists are written first."""
    runs = []
    for seed in seeds:
        for fold in ran_folds(folds, only_folds):
            data, sha = fold_data(setting, seed, fold, folds, fraction, count)
            fold_dir = setting.out / f"seed{seed}" / f"fold{fold}"
            for arm, extra in arms.items():
                # the name joins the log file names (<fold>-<name>-train.log): unique over seeds
                step = setting.step(f"seed{seed}-{arm}", bundle, fold_dir / arm, data, {"datalist": sha}, extra)
                runs.append((seed, fold, arm, step))
    return runs


def _numbers(section: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of an evaluation or validation section (numbers only, not counts or epochs)."""
    return {
        k: v
        for k, v in section.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in NOT_METRICS
    }


def run_record(seed: int, fold: int, arm: str, step: Step, cost: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One run's test and validation metrics, best epoch, what its training cost (``cost``: CPU and wall
    seconds of its train command, resumed segments summed; None where the run folder's log lacks it), the
    arithmetic it trained in (when recorded) and its blank flag."""
    metrics = step.metrics
    test = _numbers(metrics.evaluation("test"))
    positive = test.get("dice_positive")
    training = metrics.section("training")
    return {
        "arm": arm,
        "seed": seed,
        "fold": fold,
        "test": test,
        "val": _numbers(metrics.validation),
        "best_epoch": metrics.validation.get("best_epoch"),
        "train_cpu_s": (cost or {}).get("cpu_s"),
        "train_wall_s": (cost or {}).get("wall_s"),
        "blank": positive is not None and positive < BLANK_POSITIVE_DICE,
        "arithmetic": training.get("arithmetic"),
    }


def _ordered(names: set[str]) -> list[str]:
    """Metric names: the shown ones first, then the others alphabetically."""
    return [m for m in SHOWN if m in names] + sorted(names - set(SHOWN))


def summarise(per_run: Sequence[dict[str, Any]], arms: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per arm: mean ± std over folds x seeds of every test and validation metric, blank runs, n."""
    summary = {}
    for arm in arms:
        runs = [r for r in per_run if r["arm"] == arm]
        entry: dict[str, Any] = {}
        for part in ("test", "val"):
            names = _ordered({m for r in runs for m in r[part]})
            entry.update({f"{part}_{m}": stats([r[part].get(m) for r in runs]) for m in names})
        blank = [f"seed{r['seed']}/fold{r['fold']}" for r in runs if r["blank"]]
        cpu_min = stats([r["train_cpu_s"] / 60 if r.get("train_cpu_s") is not None else None for r in runs])
        summary[arm] = {**entry, "blank_runs": len(blank), "blank": blank, "n": len(runs), "train_cpu_min": cpu_min}
    return summary


def _cell(stat: dict[str, Any] | None) -> str:
    if not stat or stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.3f}" if stat["n"] < 2 else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def table(summary: Mapping[str, dict[str, Any]]) -> str:
    """Markdown: one row per arm, test metrics, blank runs (of n) and the validation metrics."""
    val = _ordered({k.removeprefix("val_") for s in summary.values() for k in s if k.startswith("val_")})
    head = ["arm", "test dice", "test dice (positive)", "test IoU", "blank runs", *(f"val {m}" for m in val)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, s in summary.items():
        cells = [_cell(s.get(f"test_{m}")) for m in SHOWN]
        cells += [f"{s['blank_runs']}/{s['n']}", *(_cell(s.get(f"val_{m}")) for m in val)]
        lines.append(f"| {arm} | {' | '.join(cells)} |")
    return "\n".join(lines)


def cost_line(summary: Mapping[str, dict[str, Any]]) -> str:
    """``training CPU minutes a run: px128 1.3, px256 3.2`` (``-`` for an arm whose runs' costs were not logged)."""
    cells = []
    for arm, s in summary.items():
        stat = s.get("train_cpu_min") or {}
        cells.append(f"{arm} {stat['mean']:.1f}" if stat.get("mean") is not None else f"{arm} -")
    return "training CPU minutes a run: " + ", ".join(cells)


def fold_test_ids(out: Path, seeds: Sequence[int], folds: Sequence[int]) -> dict[str, dict[str, list[str]]]:
    """The image ids of each fold's test set, per seed (from the written datalists)."""

    def ids(seed: int, fold: int) -> list[str]:
        datalist = json.loads((out / f"seed{seed}" / f"fold{fold}" / "datalist.json").read_text())
        return [it["id"] for it in datalist["test"]]

    return {f"seed{s}": {f"fold{k}": ids(s, k) for k in folds} for s in seeds}


def run_ablation(
    dataset_dir: str | Path,
    out: str | Path,
    bundle: str = "baseline",
    arms: Mapping[str, dict[str, Any]] | None = None,
    folds: int = 5,
    seeds: Sequence[int] = (0,),
    labelled_fraction: float = 1.0,
    labelled_count: int | None = None,
    scale: str = "demo",
    overrides: dict[str, Any] | None = None,
    jobs: int | None = None,
    force: bool = False,
    publish_to: str | Path | None = None,
    only_folds: Sequence[int] = (),
    command: str | None = None,
) -> int:
    """Train and evaluate every arm on every fold and seed; write (and with ``publish_to`` publish) and print
    the summary. ``arms``: {name: overrides} (default: the bundle's own settings, named after it);
    ``only_folds``: train and summarise only these folds (a long ablation over several sittings, whose
    published parts ``pipeline.merge`` joins); ``command``: the command line, recorded in the summary."""
    arms = dict(arms or {bundle: {}})
    check_arguments(folds, labelled_fraction, labelled_count, only_folds)
    check_arms(arms, bundle)
    setting = RunSetting(Path(dataset_dir), Path(out), scale, dict(overrides or {}), force=force, bundles=[bundle])
    runner = Runner(jobs, 1, setting.out / "logs")
    start = time.time()
    runs = ablation_steps(setting, bundle, arms, seeds, folds, labelled_fraction, labelled_count, only_folds)
    runner.run_all({f"[seed {s} fold {k}] {arm}": partial(train_and_evaluate, runner, step, force)
                    for s, k, arm, step in runs})  # fmt: skip
    records, _ = compute.read(setting.out / "logs")
    # a run's log is <fold>-seed<s>-<arm>-train (the step's name), its datalist the fold's: compute's run key
    costs = {(r["model"], r["run"]): r for r in compute.per_run(records) if r["stage"] == "train"}
    per_run = [run_record(s, k, arm, step, costs.get((f"seed{s}-{arm}", f"{s}/fold{k}"))) for s, k, arm, step in runs]
    summary = summarise(per_run, list(arms))
    ran = ran_folds(folds, only_folds)
    results = {
        **({"command": command} if command else {}),
        "settings": {
            "dataset": setting.shown["dataset_dir"],
            "bundle": bundle,
            "folds": folds,
            "only_folds": ran if only_folds else None,
            "seeds": list(seeds),
            "labelled_fraction": labelled_fraction,
            "labelled_count": labelled_count,
            "scale": scale,
            "arms": portable(arms),
            "overrides": setting.preset,
            "wall_time_s": round(time.time() - start),
            "arithmetic": collect_arithmetic(r["arithmetic"] for r in per_run),
        },
        "summary": summary,
        "per_run": per_run,
        "test_sets": fold_test_ids(setting.out, seeds, ran),
    }
    write_results(setting.out / "ablation.json", results, "ablation", table(summary), publish_to)
    print(arithmetic_line(results["settings"]["arithmetic"]))
    print(cost_line(summary))
    return 0
