"""The auxiliary-task registry: one class per self-supervised task, registered under its name.

A task bundles the three things a pretext needs: ``pretext`` (make input and target from a batch
of images, on whatever device the batch is, with an explicit random generator), ``build_head``
(the training-only head on the U-Net's bottleneck or decoder features) and ``loss``. Adding a task
means one module with one ``@register_task`` class, imported in ``common/ssl/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

# "both": the head gets (bottleneck, decoder features) from one full U-Net pass (HSSL needs image-level
# and dense terms)
Feature = Literal["bottleneck", "decoder", "both"]


@dataclass
class Pretext:
    """A generated pretext batch: what the network sees, what it must predict, and where (dense tasks)."""

    input: torch.Tensor
    target: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    labels: dict[str, torch.Tensor] | None = None  # per-image class labels (tasks with ``label_keys``)


class SSLTask:
    """Base class of an auxiliary self-supervised task (see module docstring)."""

    name: ClassVar[str] = ""
    feature: ClassVar[Feature] = "bottleneck"
    # batch keys of per-image labels the task needs (e.g. the source dataset); the engines pass them
    # to ``pretext`` as ``labels`` (tasks without label keys are called without)
    label_keys: ClassVar[tuple[str, ...]] = ()
    # lambda of the joint bundle until the lambda sweep (scripts/sweep_lambda.py) has measured one:
    # classification and contrastive losses start near log(K) ~ 1.4-3.2, restoration losses near 0.05-0.3
    default_weight: ClassVar[float] = 0.1
    # part of ``multitask_joint`` (all tasks at once: the paper's five; HSSL is a separate method)
    in_multitask: ClassVar[bool] = True

    def pretext(self, images: torch.Tensor, generator: torch.Generator) -> Pretext:
        """Make a pretext batch from images (B, C, H, W) on their device."""
        raise NotImplementedError

    def build_head(self, channels: Any) -> nn.Module:
        """The head mapping ``feature`` maps with ``channels`` channels (a (bottleneck, decoder) pair for
        ``feature == "both"``) to the task's prediction."""
        raise NotImplementedError

    def loss(self, prediction: torch.Tensor, pretext: Pretext) -> torch.Tensor:
        """Scalar loss of a head prediction against the pretext."""
        raise NotImplementedError


TASKS: dict[str, type[SSLTask]] = {}


def register_task(cls: type[SSLTask]) -> type[SSLTask]:
    """Class decorator: add a task to the registry under ``cls.name``."""
    if not cls.name or cls.name in TASKS:
        raise ValueError(f"task name {cls.name!r} is empty or already registered")
    TASKS[cls.name] = cls
    return cls


def list_tasks(multitask_only: bool = False) -> list[str]:
    """Registered task names in registration order (``multitask_only``: those in ``multitask_joint``).

    Every script, the generator and the pipeline take the task list from here (like timm's
    ``list_models``): registering a task is all it takes to get its bundles and its teacher.
    """
    return [name for name, cls in TASKS.items() if cls.in_multitask or not multitask_only]


def create_task(name: str, **options: Any) -> SSLTask:
    """Instantiate a registered task with its options (e.g. ``grid=3`` for jigsaw)."""
    if name not in TASKS:
        raise KeyError(f"unknown auxiliary task {name!r}; registered: {sorted(TASKS)}")
    return TASKS[name](**options)


def create_tasks(names: Iterable[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, SSLTask]:
    """Instantiate several tasks by name, with per-task options ``{name: {option: value}}``."""
    options = options or {}
    unknown = set(options) - set(names)
    if unknown:
        raise KeyError(f"options given for tasks that are not used: {sorted(unknown)}")
    return {name: create_task(name, **options.get(name, {})) for name in names}


def pooled_mlp(channels: int, hidden: int, out: int) -> nn.Module:
    """Global-average-pooled features through a two-layer MLP (classification/projection heads)."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out),
    )


def restoration_head(channels: int) -> nn.Module:
    """Decoder features (half resolution) to a 1-channel full-resolution image: a twin of the U-Net's
    segmentation head (one stride-2 transposed convolution). A wider head (32 -> 32 channels at full
    resolution) made a dense joint step 2.3-2.5x the baseline step on CPU instead of about 2x."""
    return nn.ConvTranspose2d(channels, 1, kernel_size=3, stride=2, padding=1, output_padding=1)


def uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) numbers from ``generator`` (which lives on ``device``)."""
    return torch.rand(shape, generator=generator, device=device)


def randint(high: int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Integers in [0, high) from ``generator``."""
    return torch.randint(high, shape, generator=generator, device=device)
