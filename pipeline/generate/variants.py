"""The generated stage-1 bundles: one joint and one pre-training bundle per registered auxiliary task,
and ``multitask_joint`` with every task that takes part in it (``common.ssl.list_tasks``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.ssl import TASKS, list_tasks
from pipeline.generate.sources import load_sweep

MULTITASK = "multitask_joint"


def default_weight(task: str, sweep: dict[str, Any]) -> float:
    """The swept lambda with the highest validation Dice (the smaller lambda on a tie), else the task's
    own ``default_weight``."""
    runs = sweep.get("tasks", {}).get(task)
    if not runs:
        return float(TASKS[task].default_weight)
    best = max(runs, key=lambda r: ((r.get("dice") or 0.0), -r["lambda"]))
    return float(best["lambda"])


@dataclass(frozen=True)
class Variant:
    """One generated bundle: its auxiliary tasks with their lambdas, and the mode."""

    name: str
    mode: str  # "joint" or "pretrain"
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return list(self.weights)

    @property
    def summary(self) -> str:
        """One line of what the variant changes in the baseline."""
        if self.mode == "joint":
            terms = " + ".join(f"{w:g} x {t} loss" for t, w in self.weights.items())
            return f"MultiTaskTrainer, every iteration the segmentation loss + {terms}"
        return f"{', '.join(self.tasks)} pre-training phase, then the baseline recipe from its weights"


def variants() -> list[Variant]:
    """Per registered task a joint and a pre-training bundle, then the all-tasks joint competitor."""
    sweep = load_sweep()
    weights = {t: default_weight(t, sweep) for t in list_tasks()}
    out = []
    for task, weight in weights.items():
        out.append(Variant(f"{task}_joint", "joint", {task: weight}))
        out.append(Variant(f"{task}_pretrain", "pretrain", {task: 1.0}))
    out.append(Variant(MULTITASK, "joint", {t: weights[t] for t in list_tasks(multitask_only=True)}))
    return out
