"""The training layer: networks, engines (joint, pre-training, distillation, Mean Teacher), handlers, losses,
flip TTA, post-processing tuned on validation and the random state that resumable checkpoints carry."""

from common.training import engines, handlers, inferers, kd, mean_teacher, metrics, networks, rng, tuning

__all__ = ["engines", "handlers", "inferers", "kd", "mean_teacher", "metrics", "networks", "rng", "tuning"]
