"""The training layer: networks, engines (the precision-aware base, joint, pre-training, distillation, Mean
Teacher), handlers, losses, flip TTA, post-processing tuned on validation and the random state that resumable
checkpoints carry."""

from common.training import (
    base,
    engines,
    handlers,
    inferers,
    kd,
    mean_teacher,
    metrics,
    networks,
    precision,
    rng,
    tuning,
)

__all__ = [
    "base",
    "engines",
    "handlers",
    "inferers",
    "kd",
    "mean_teacher",
    "metrics",
    "networks",
    "precision",
    "rng",
    "tuning",
]
