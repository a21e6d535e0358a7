"""Auxiliary self-supervised tasks: the registry and the five tasks of the two-stage method."""

from common.ssl import contrastive, genesis, inpainting, jigsaw, rotation, transforms
from common.ssl.registry import TASKS, Pretext, SSLTask, create_task, create_tasks, register_task

__all__ = [
    "TASKS",
    "Pretext",
    "SSLTask",
    "contrastive",
    "create_task",
    "create_tasks",
    "genesis",
    "inpainting",
    "jigsaw",
    "register_task",
    "rotation",
    "transforms",
]
