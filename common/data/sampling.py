"""Positive-aware sampling of the training images: a set share of lesion images per epoch, optionally
scheduled (the SIIM-ACR winner drew 80 % positives at first and 40 % at the end).

:class:`PositiveRateSampler` is MONAI's ``DistributedWeightedRandomSampler`` (so it shards under
``torchrun``) with weights that follow the schedule and a generator seeded by (seed, epoch, rank): MONAI's
engines call ``set_epoch`` at every epoch start, so the draws of epoch ``e`` depend on nothing else and a
resumed run draws exactly what the uninterrupted one did. Items without a label (the student's unlabelled
images) keep their natural share of the draws, or the share ``1 - labelled_share`` when that is set (with a
1,000-image pool and 50 labelled images the natural share leaves the labels 5 % of the draws); the rate
splits the labelled share.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.data import DistributedSampler, DistributedWeightedRandomSampler
from torch.utils.data import Dataset, Sampler


def item_positive(item: dict[str, Any]) -> bool | None:
    """Whether a datalist item's mask has any foreground; None for an unlabelled item.

    Read from ``positive`` (what the datalist records), else from its RLE list (SIIM items: negatives have
    none), else from its mask file (items MONAI Label hands over)."""
    if "positive" in item:
        return bool(item["positive"])
    if "rle" in item:
        return bool(item["rle"])
    if "label" in item:
        from common.data.datalist import mask_is_positive

        return mask_is_positive(Path(item["label"]))
    return None


#: what switches a rate off: ``null`` in JSON, or one of these strings (a ``None`` given on MONAI's bundle command
#: line is dropped as "not given", so the command line needs a word)
OFF = ("off", "none", "null")


def rate_setting(value: float | str | None) -> float | None:
    """A ``pos_sample_rate``-style setting as a number, or None when it is off (``null``/``"off"``)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in OFF):
        return None
    return float(value)


def scheduled_rate(rate: float, final_rate: float | None, epoch: int, epochs: int) -> float:
    """The share of positives at ``epoch`` (1-based): ``rate`` at the first epoch, linearly to ``final_rate``
    at the last (constant without one)."""
    if final_rate is None or epochs <= 1:
        return rate
    progress = min(max(epoch - 1, 0), epochs - 1) / (epochs - 1)
    return rate + (final_rate - rate) * progress


#: the word for "labelled items keep their natural share of the draws" (``labelled_share``'s default)
NATURAL = "natural"


def share_setting(value: float | str | None) -> float | None:
    """A ``labelled_share`` setting as a number in (0, 1], or None for the natural share (``"natural"``/off)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in (NATURAL, *OFF)):
        return None
    share = float(value)
    if not 0.0 < share <= 1.0:  # (NaN fails too)
        raise ValueError(f"labelled_share must be {NATURAL} or a number in (0, 1], got {value}")
    return share


def class_weights(positive: Sequence[bool | None], rate: float, labelled_share: float | None = None) -> list[float]:
    """Per-item draw weights: positives share ``rate`` of the labelled items' draws, negatives the rest;
    the labelled items together draw ``labelled_share`` (None: their natural share ``labelled / all``), the
    unlabelled items (None) the rest, uniformly. A class with no item gives its share to the other."""
    n = len(positive)
    n_pos = sum(1 for p in positive if p is True)
    n_neg = sum(1 for p in positive if p is False)
    n_unlabelled = n - n_pos - n_neg
    share = (n_pos + n_neg) / n if n else 0.0
    unlabelled = 1.0 / n if n else 0.0  # each unlabelled item's weight at the natural share
    if labelled_share is not None and n_unlabelled and (n_pos or n_neg):
        share, unlabelled = labelled_share, (1 - labelled_share) / n_unlabelled
    if n_pos == 0 or n_neg == 0:
        rate = 1.0 if n_pos else 0.0
    weight = {
        True: share * rate / n_pos if n_pos else 0.0,
        False: share * (1 - rate) / n_neg if n_neg else 0.0,
        None: unlabelled,
    }
    return [weight[p] for p in positive]


class PositiveRateSampler(DistributedWeightedRandomSampler):
    """Draw (with replacement) ``len(dataset) / ranks`` items (or ``samples_per_epoch / ranks``) per epoch and
    rank, positives at a scheduled rate.

    Args:
        dataset: the training dataset; ``positive`` gives its items' flags (:func:`item_positive`).
        positive: per item True/False/None (unlabelled).
        rate: share of positives among the labelled draws at the first epoch, in [0, 1].
        final_rate: the share at the last epoch (linear in between); None keeps ``rate``.
        epochs: the training's epochs (the schedule's length).
        seed: the draws' seed (with the epoch and the rank).
        num_replicas, rank: as ``DistributedSampler``; default: the process group's, else 1 and 0.
        samples_per_epoch: draws per epoch over all ranks; 0: ``len(dataset)``.
        labelled_share: the labelled items' share of the draws (None: their natural share).
    """

    def __init__(
        self,
        dataset: Dataset,
        positive: Sequence[bool | None],
        rate: float,
        final_rate: float | None = None,
        epochs: int = 1,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        samples_per_epoch: int = 0,
        labelled_share: float | None = None,
    ) -> None:
        if len(positive) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"positive has {len(positive)} flags for a dataset of {len(dataset)} items")  # type: ignore[arg-type]
        for name, value in (("pos_sample_rate", rate), ("pos_sample_rate_final", final_rate)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        distributed = dist.is_available() and dist.is_initialized()
        replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if distributed else 1)
        super().__init__(
            dataset,
            weights=class_weights(positive, rate, labelled_share),
            generator=torch.Generator(),
            even_divisible=True,
            num_replicas=num_replicas if num_replicas is not None else (None if distributed else 1),
            rank=rank if rank is not None else (None if distributed else 0),
            shuffle=True,
            seed=seed,
            num_samples_per_rank=-(-samples_per_epoch // replicas) if samples_per_epoch else None,
        )
        self.positive, self.rate, self.final_rate, self.epochs = list(positive), rate, final_rate, epochs
        self.labelled_share = labelled_share
        self.set_epoch(1)

    def rate_at(self, epoch: int) -> float:
        """The share of positives drawn at ``epoch``."""
        return scheduled_rate(self.rate, self.final_rate, epoch, self.epochs)

    def set_epoch(self, epoch: int) -> None:
        """The epoch's weights and generator seed (MONAI's engines call this at every epoch start)."""
        super().set_epoch(epoch)
        self.weights = class_weights(self.positive, self.rate_at(epoch), self.labelled_share)
        state = np.random.SeedSequence([self.seed, epoch, self.rank]).generate_state(2, dtype=np.uint32)
        self.generator.manual_seed(int(state[0]) << 32 | int(state[1]))


def labelled_sampler(
    dataset: Dataset,
    rate: float | str | None,
    final_rate: float | str | None = None,
    epochs: int = 1,
    seed: int = 0,
    distributed: bool = False,
    samples_per_epoch: int = 0,
    labelled_share: float | str | None = None,
) -> Sampler | None:
    """The training loader's sampler: a :class:`PositiveRateSampler` when ``rate`` is set (not off: ``OFF``);
    else, under ``torchrun`` (``distributed``), MONAI's shuffling ``DistributedSampler``; else None (the loader
    shuffles).

    ``samples_per_epoch`` (> 0): that many draws per epoch whatever the dataset's size, so that runs with 8 or
    80 labelled images (or the student's labelled + unlabelled items) take the same number of steps; without a
    rate they are uniform draws (:class:`EpochRandomSampler`). Not with
    ``distributed`` and no rate (MONAI's ``DistributedSampler`` draws each item once).

    ``labelled_share`` (a number, not ``"natural"``): the labelled items' share of the draws when the dataset
    also holds unlabelled ones (the student's), whatever the pool's size; without a rate the labelled items
    are then drawn uniformly within that share."""
    rate, final_rate = rate_setting(rate), rate_setting(final_rate)
    samples, share = samples_setting(samples_per_epoch), share_setting(labelled_share)
    if rate is not None or share is not None:
        data = getattr(dataset, "data", None)
        if data is None:
            raise TypeError(
                "pos_sample_rate/labelled_share need a dataset with its datalist items in .data (a MONAI Dataset)"
            )
        positive = [item_positive(item) for item in data]
        if rate is None:  # uniform within the labelled share: positives at their natural rate, no schedule
            labelled = [p for p in positive if p is not None]
            rate = sum(labelled) / len(labelled) if labelled else 0.0
        return PositiveRateSampler(
            dataset, positive, rate, final_rate, epochs, seed, samples_per_epoch=samples, labelled_share=share
        )
    if distributed:
        if samples:
            raise ValueError("samples_per_epoch needs pos_sample_rate under torchrun (or samples_per_epoch 0)")
        return DistributedSampler(dataset, even_divisible=True, shuffle=True)
    if samples:
        return EpochRandomSampler(dataset, samples, seed)
    return None


def samples_setting(value: int | str | None) -> int:
    """``samples_per_epoch`` as a count: 0 (or ``OFF``/``"all"``) means one pass over the dataset."""
    if value is None or (isinstance(value, str) and value.strip().lower() in (*OFF, "all")):
        return 0
    count = int(value)
    if count < 0:
        raise ValueError(f"samples_per_epoch must be >= 0 (0: the dataset's size), got {value}")
    return count


class EpochRandomSampler(PositiveRateSampler):
    """``num_samples`` uniform draws (with replacement) per epoch, seeded by (seed, epoch): a
    :class:`PositiveRateSampler` that treats every item as unlabelled (no class to favour)."""

    def __init__(self, dataset: Dataset, num_samples: int, seed: int = 0) -> None:
        super().__init__(dataset, [None] * len(dataset), 0.0, seed=seed, samples_per_epoch=num_samples)  # type: ignore[arg-type]
