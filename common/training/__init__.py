"""The training layer: networks, engines (joint, pre-training, distillation), handlers, losses and the
random state that resumable checkpoints carry."""

from common.training import engines, handlers, kd, networks, rng

__all__ = ["engines", "handlers", "kd", "networks", "rng"]
