"""Auxiliary self-supervised tasks: the registry, the five tasks of the two-stage method and HSSL."""

from common.ssl import contrastive, genesis, hssl, inpainting, jigsaw, rotation, transforms
from common.ssl.registry import TASKS, Pretext, SSLTask, create_task, create_tasks, register_task

__all__ = [
    "TASKS",
    "Pretext",
    "SSLTask",
    "contrastive",
    "create_task",
    "create_tasks",
    "genesis",
    "hssl",
    "inpainting",
    "jigsaw",
    "register_task",
    "rotation",
    "transforms",
]
