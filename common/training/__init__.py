"""The training layer: networks, engines (joint, pre-training, distillation), handlers and losses."""

from common.training import engines, handlers, kd, networks

__all__ = ["engines", "handlers", "kd", "networks"]
