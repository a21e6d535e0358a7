"""Per-image comparison of two models of a run (the report's scatter and the choice of its overlay images).

Each evaluation writes MONAI's ``MetricsSaver`` files under ``<model>/eval/<split>/``; ``dice_raw.csv`` holds
every image's Dice with the competition rule (empty truth and empty prediction: 1) by file name. Pairing the
student's and the baseline's rows over all runs (seeds x folds) shows where distillation changes what a model
finds, image by image, which a mean over 18 test images hides.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RAW = "dice_raw.csv"


def per_image_dice(model_dir: str | Path, split: str = "test") -> dict[str, float]:
    """Image file -> Dice of the model's evaluation on ``split`` (empty when that evaluation is absent)."""
    path = Path(model_dir) / "eval" / split / RAW
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {row["filename"]: float(row["mean"]) for row in rows if not math.isnan(float(row["mean"]))}


def paired(
    runs: Sequence[dict[str, Any]], a: str, b: str, split: str = "test"
) -> list[tuple[str, str, float, float, bool]]:
    """(run key, image, Dice of ``a``, Dice of ``b``, positive) for every test image both models scored, over
    ``runs`` (each with ``key``, ``models`` (name -> folder) and ``positive`` (image -> has a lesion))."""
    pairs = []
    for run in runs:
        models = run["models"]
        if a not in models or b not in models:
            continue
        da, db = per_image_dice(models[a], split), per_image_dice(models[b], split)
        for image in sorted(set(da) & set(db)):
            pairs.append((run["key"], image, da[image], db[image], bool(run["positive"].get(image, False))))
    return pairs


def most_different(pairs: Sequence[tuple[str, str, float, float, bool]], n: int) -> list[str]:
    """The ``n`` images where the two models' Dice differ most (positives first among equal differences)."""
    ranked = sorted(pairs, key=lambda p: (-abs(p[3] - p[2]), not p[4], p[1]))
    return [p[1] for p in ranked[:n]]


def plot_scatter(pairs: Sequence[tuple[str, str, float, float, bool]], a: str, b: str, path: Path) -> bool:
    """Scatter of ``b``'s per-image Dice against ``a``'s (positive images in red); False when nothing to plot."""
    if not pairs:
        return False
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.6))
    for positive, colour, label in ((False, "0.55", "no lesion"), (True, "tab:red", "pneumothorax / lesion")):
        pts = [(p[2], p[3]) for p in pairs if p[4] == positive]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=14, c=colour, alpha=0.7, label=f"{label} ({len(pts)})")
    ax.plot([0, 1], [0, 1], lw=0.8, c="k", ls="--")
    better = sum(p[3] > p[2] for p in pairs)
    worse = sum(p[3] < p[2] for p in pairs)
    ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), xlabel=f"{a}: test Dice per image", ylabel=f"{b}: test Dice")
    ax.set_title(f"{b} better on {better}, worse on {worse} of {len(pairs)} images", fontsize=8)
    # below the axes: the corners (1, 0) and (0, 1) hold the decisive points (an empty negative kept or lost)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
