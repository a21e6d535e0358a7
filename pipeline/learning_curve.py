"""The few-label study's learning curve (``scripts/learning_curve.py``): test Dice against the number of
labelled images, one line per model family with a band of ± one standard deviation over folds x seeds,
from the summaries ``run_pipeline.py --publish`` wrote for each labelled size.

Families: the baseline, the best stage-1 teacher (the one with the highest mean validation ``dice_hmean`` at
that size: chosen on validation, never on test), ``multitask_joint``, ``mean_teacher``, the teacher
ensemble and the distilled student. A summary of ``scripts/ablate.py`` (``kind`` ablation) adds its arm
named ``baseline`` (the bundle's defaults) as a line of its own: the baseline alone on every fold, cheap
enough to run at sizes where the whole pipeline is not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.report import is_teacher_row

FAMILIES = ("baseline", "best teacher (validation)", "multitask_joint", "mean_teacher", "teacher ensemble",
            "student (distill)")  # fmt: skip
ABLATION_FAMILY, ABLATION_ARM = "baseline alone (ablate.py)", "baseline"
METRICS = {"test_dice_positive": "test Dice, images with a lesion", "test_dice": "test Dice (competition rule)"}
VALIDATION_KEY = "val_dice_hmean"


def labelled_count(result: dict[str, Any]) -> int:
    """The labelled training images per run of a published summary (``--labelled-count``)."""
    count = result.get("settings", {}).get("labelled_count")
    if not isinstance(count, int):
        raise ValueError(f"{result.get('label', 'a summary')}: no settings.labelled_count (run with --labelled-count)")
    return count


def best_teacher(summary: dict[str, Any]) -> str | None:
    """The summary row of the teacher with the highest mean validation ``dice_hmean`` (None without teachers)."""
    teachers = {k: v for k, v in summary.items() if is_teacher_row(k)}
    scored = {k: v[VALIDATION_KEY]["mean"] for k, v in teachers.items() if v.get(VALIDATION_KEY, {}).get("mean")}
    return max(scored, key=scored.__getitem__) if scored else None


def curve_points(results: Sequence[dict[str, Any]], metric: str) -> dict[str, list[tuple[int, float, float, int]]]:
    """Family -> [(labelled images, mean, std, runs)] sorted by size, for ``metric``."""
    points: dict[str, list[tuple[int, float, float, int]]] = {f: [] for f in (*FAMILIES, ABLATION_FAMILY)}
    for result in results:
        n, summary = labelled_count(result), result["summary"]
        if result.get("kind") == "ablation":
            rows = {ABLATION_FAMILY: ABLATION_ARM}
        else:
            rows = {f: f for f in FAMILIES}
            rows["best teacher (validation)"] = best_teacher(summary) or ""
        for family, row in rows.items():
            stat = summary.get(row, {}).get(metric)
            if stat and stat.get("mean") is not None:
                points[family].append((n, stat["mean"], stat.get("std") or 0.0, stat.get("n", 1)))
    return {f: sorted(p) for f, p in points.items() if p}


def table(results: Sequence[dict[str, Any]], metric: str = "test_dice_positive") -> str:
    """Markdown: one row per family, one column per labelled size, mean ± std (runs)."""
    points = curve_points(results, metric)
    sizes = sorted({labelled_count(r) for r in results})
    lines = [f"| {METRICS.get(metric, metric)} | " + " | ".join(f"n = {n}" for n in sizes) + " |"]
    lines.append("|---|" + "---|" * len(sizes))
    for family, pts in points.items():
        by_n = {p[0]: p for p in pts}
        cells = [f"{by_n[n][1]:.3f} ± {by_n[n][2]:.3f} ({by_n[n][3]})" if n in by_n else "–" for n in sizes]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def axis_top(values: Sequence[float], step: float = 0.05) -> float:
    """The y-axis' upper limit for Dice values: the highest band top plus a tenth, rounded up to ``step``, at
    most 1 (a panel whose models all score under 0.15 is not drawn flat along the bottom of 0-1)."""
    highest = max(values, default=1.0) * 1.1
    return min(1.0, max(step, math.ceil(highest / step - 1e-9) * step))


def plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    """One panel per metric of ``METRICS``: mean per family against labelled images, ± std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.2 * len(METRICS), 3.8), squeeze=False)
    for ax, (metric, title) in zip(axes[0], METRICS.items(), strict=True):
        band_tops = []
        for family, pts in curve_points(results, metric).items():
            n, mean, std = ([p[i] for p in pts] for i in range(3))
            ax.plot(n, mean, marker="o", ms=3, label=family)
            ax.fill_between(n, [m - s for m, s in zip(mean, std, strict=True)],
                            [m + s for m, s in zip(mean, std, strict=True)], alpha=0.15)  # fmt: skip
            band_tops += [m + s for m, s in zip(mean, std, strict=True)]
        ax.set(xscale="log", xlabel="labelled training images", ylabel=title, ylim=(0, axis_top(band_tops)))
        sizes = sorted({labelled_count(r) for r in results})
        ax.set_xticks(sizes, [str(n) for n in sizes], minor=False)  # the sizes measured, not powers of ten
        ax.set_xticks([], minor=True)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The published summaries: per labelled size one pipeline summary and one baseline ablation at most
    (two of a kind with the same size: an error naming both; an ablation without a ``baseline`` arm: an error)."""
    results, seen = [], {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        n, kind = labelled_count(result), result.get("kind", "pipeline")
        if (kind, n) in seen:
            raise ValueError(f"{seen[kind, n]} and {path} both hold {n} labelled images")
        if kind == "ablation" and ABLATION_ARM not in result.get("summary", {}):
            raise ValueError(f"{path}: an ablation summary without an arm named {ABLATION_ARM!r}")
        seen[kind, n] = path
        results.append(result)
    return results
