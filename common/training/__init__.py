"""The training layer: networks, engines (joint, pre-training, distillation, Mean Teacher), handlers, losses
and the random state that resumable checkpoints carry."""

from common.training import engines, handlers, kd, mean_teacher, metrics, networks, rng

__all__ = ["engines", "handlers", "kd", "mean_teacher", "metrics", "networks", "rng"]
