"""Auxiliary self-supervised tasks: the registry, the five tasks of the two-stage method and HSSL."""

# registration order is the order of the task list everywhere (bundles, tables, the report): the
# paper's five tasks, then HSSL
from common.ssl import rotation  # isort: split

from common.ssl import jigsaw  # isort: split

from common.ssl import inpainting  # isort: split

from common.ssl import genesis  # isort: split

from common.ssl import contrastive  # isort: split

from common.ssl import hssl  # isort: split

from common.ssl import transforms
from common.ssl.registry import TASKS, Pretext, SSLTask, create_task, create_tasks, list_tasks, register_task

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
    "list_tasks",
    "register_task",
    "rotation",
    "transforms",
]
