"""The pool pre-trainings' pretext loss per epoch, read from their logs: has it flattened?

Each pre-training (``configs/pretrain.json``) logs ``Epoch[N] Metrics -- aux_loss: X`` once per epoch
(MONAI's ``StatsHandler``); the last value logged for an epoch wins (a resumed run logs its epochs
again). ``plateau`` compares the mean of the last ``window`` epochs with the ``window`` before, so the
report can say whether the epoch count was long enough (the study's protocol asks for a flattened curve).
"""

from __future__ import annotations

import re
from pathlib import Path

from common.utils.io import atomic_path
from pipeline.compute import model_and_stage

_EPOCH_LOSS = re.compile(r"Epoch\[(\d+)\] Metrics -- .*?aux_loss: ([-+0-9.eE]+|nan)")


def read_curve(log: Path) -> list[float]:
    """The per-epoch pretext loss of one pre-training log, epoch 1 first (epochs never logged are absent)."""
    by_epoch: dict[int, float] = {}
    for match in _EPOCH_LOSS.finditer(log.read_text(errors="replace")):
        by_epoch[int(match.group(1))] = float(match.group(2))
    return [by_epoch[e] for e in sorted(by_epoch)]


def pretraining_curves(log_dir: Path) -> dict[str, list[float]]:
    """``<log name> -> curve`` for every pre-training log of a run (``<split>-<model>-pretrain.log``)."""
    curves = {}
    for log in sorted(log_dir.glob("*-pretrain.log")):
        model, stage = model_and_stage(log.stem)
        if stage == "pretrain" and (curve := read_curve(log)):
            curves[f"{log.stem.split('-')[0]} {model}"] = curve
    return curves


def plateau(curve: list[float], window: int = 5) -> float | None:
    """Relative change of the mean loss over the last ``window`` epochs against the ``window`` before
    (-0.02: 2 % lower); None when the curve is shorter than two windows."""
    if len(curve) < 2 * window:
        return None
    last, before = curve[-window:], curve[-2 * window : -window]
    reference = sum(before) / window
    return (sum(last) / window - reference) / reference if reference else None


def plot_curves(curves: dict[str, list[float]], path: Path) -> None:
    """One line per pre-training, pretext loss against epoch, log scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name)
    ax.set_xlabel("pre-training epoch")
    ax.set_ylabel("pretext loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
