"""Post-processing chosen on validation, as the SIIM-ACR winners did: a probability threshold, a minimum area
of confident pixels below which the mask is emptied, a second, lower threshold for the kept mask (the
"triplet"), and whether flip test-time augmentation helps.

:class:`PostprocessingTuner` is an ignite handler for the bundle's own evaluator (``configs/tune.json``): it
collects the validation probabilities once without and once with TTA, scores the whole grid at once on the
competition Dice (an image with an empty truth scores 1 for an empty mask, else 0) and writes the winner into
the ``postprocessing`` section of the model's ``metrics.json``, with the model's sha256. ``evaluate.json`` and
``inference.json`` read it back (:func:`tuned_setting`) unless ``use_tuned`` is false; a retrained model (another
sha256) falls back to the defaults. The defaults win ties, so a setting changes only when validation says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine

from common.training.inferers import FlipTTAInferer
from common.utils.io import file_sha256
from common.utils.metrics import read_metrics_file, trained_setting, update_metrics_file

logger = logging.getLogger(__name__)

SECTION = "postprocessing"
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
LOW_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_AREA_FRACTIONS = (0.0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016)
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_AREA_FRACTION = 0.002  # the bundles' min_pred_area_fraction


@dataclass(frozen=True)
class Postprocessing:
    """One setting of the evaluation's post-processing (the names of the bundle settings)."""

    pred_threshold: float = DEFAULT_THRESHOLD
    pred_threshold_low: float = DEFAULT_THRESHOLD
    min_pred_area_fraction: float = DEFAULT_MIN_AREA_FRACTION
    tta: bool = False


def tuned_setting(checkpoint: str | Path, key: str, default: Any, use_tuned: bool = True) -> Any:
    """``key`` of the post-processing tuned for ``checkpoint`` (its ``metrics.json``'s ``postprocessing``
    section, written for this very file), else ``default``; ``use_tuned`` false: always ``default``."""
    if not use_tuned:
        return default
    tuned = read_metrics_file(Path(checkpoint).parent / "metrics.json").get(SECTION) or {}
    if key not in tuned or not Path(checkpoint).is_file() or tuned.get("source_sha256") != file_sha256(checkpoint):
        return default
    return tuned[key]


def default_setting(checkpoint: str | Path) -> Postprocessing:
    """The untuned post-processing of a model: 0.5 for both thresholds, its trained minimum area, no TTA."""
    area = trained_setting(checkpoint, "min_pred_area_fraction", DEFAULT_MIN_AREA_FRACTION)
    return Postprocessing(min_pred_area_fraction=float(area))


def grid_scores(
    probs: torch.Tensor,
    labels: torch.Tensor,
    thresholds: Sequence[float],
    lows: Sequence[float],
    areas: Sequence[float],
) -> torch.Tensor:
    """Mean competition Dice of every (threshold, low threshold, minimum area fraction), shape (T, L, A); NaN
    where the low threshold exceeds the threshold.

    ``probs``: (N, P) probabilities, ``labels``: (N, P) truth. An image's mask is ``probs > low``, emptied when
    fewer than ``area * P`` pixels have ``probs > threshold`` (``EmptySmallMaskd`` with a ``score_key``)."""
    truth = labels > 0
    n_pixels = probs.shape[1]
    truth_sum = truth.sum(1).double()
    empty_truth = (truth_sum == 0).double()  # the score of an emptied mask
    confident = torch.stack([(probs > t).sum(1) for t in thresholds]).double()  # (T, N)
    low_dice = []
    for low in lows:
        mask = probs > low
        inter, mask_sum = (mask & truth).sum(1).double(), mask.sum(1).double()
        total = truth_sum + mask_sum
        low_dice.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)))
    dice = torch.stack(low_dice)  # (L, N)
    keep = confident[:, None, :] >= torch.tensor(areas, dtype=torch.double)[:, None] * n_pixels  # (T, A, N)
    scores = torch.where(keep[:, None], dice[None, :, None], empty_truth).mean(-1)  # (T, L, A)
    invalid = torch.tensor(lows)[None, :] > torch.tensor(thresholds)[:, None]
    return scores.masked_fill(invalid[:, :, None], float("nan"))


def choose(
    scores: dict[bool, torch.Tensor], axes: tuple[Sequence[float], ...], default: Postprocessing
) -> tuple[Postprocessing, float, float]:
    """(the best setting, its score, the default's score) over the grids of ``scores`` (by TTA on/off);
    the default is kept unless another setting scores strictly higher."""
    where = axes[0].index(default.pred_threshold), axes[1].index(default.pred_threshold_low)
    default_score = float(scores[default.tta][where][axes[2].index(default.min_pred_area_fraction)])
    best, best_score = default, default_score
    for tta, grid in scores.items():
        flat = torch.nan_to_num(grid, nan=-1.0)
        index = int(flat.argmax())
        score = float(flat.flatten()[index])
        if score > best_score + 1e-9:
            t, low, area = (axes[i][j] for i, j in enumerate(torch.unravel_index(torch.tensor(index), grid.shape)))
            best, best_score = Postprocessing(float(t), float(low), float(area), tta), score
    return best, best_score, default_score


def _axes(default: Postprocessing) -> tuple[tuple[float, ...], ...]:
    """The grid's axes, each with the default's value in it."""

    def axis(values: Sequence[float], value: float) -> tuple[float, ...]:
        return tuple(sorted({*values, value}))

    return (
        axis(THRESHOLDS, default.pred_threshold),
        axis(LOW_THRESHOLDS, default.pred_threshold_low),
        axis(MIN_AREA_FRACTIONS, default.min_pred_area_fraction),
    )


class PostprocessingTuner:
    """Attach to the bundle's evaluator run on validation with post-processing = sigmoid only; run it, call
    :meth:`enable_tta`, run it again, then :meth:`finish` (``configs/tune.json`` does exactly that)."""

    def __init__(self, inferer: FlipTTAInferer, metrics_file: str, checkpoint: str, split: str = "validation") -> None:
        self.inferer, self.metrics_file, self.checkpoint, self.split = inferer, Path(metrics_file), checkpoint, split
        self.collected: dict[bool, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def attach(self, engine: Engine) -> None:
        """Collect every iteration's probabilities and labels."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)

    def collect(self, engine: Engine) -> None:
        probs, labels = from_engine(["pred", "label"])(engine.state.output)
        store = self.collected.setdefault(self.inferer.enabled, ([], []))
        store[0].extend(p.detach().float().cpu().flatten() for p in probs)
        store[1].extend(lb.detach().cpu().flatten() > 0 for lb in labels)

    def enable_tta(self) -> None:
        """The next run collects flip-TTA probabilities."""
        self.inferer.enabled = True

    def finish(self) -> dict[str, Any]:
        """Score the grid, write the chosen setting into ``metrics.json`` and return the section."""
        if not self.collected or not self.collected.get(False, ([], []))[0]:
            raise RuntimeError(f"no {self.split} image was evaluated: nothing to tune post-processing on")
        default = default_setting(self.checkpoint)
        axes = _axes(default)
        scores = {
            tta: grid_scores(torch.stack(probs), torch.stack(labels), *axes)
            for tta, (probs, labels) in self.collected.items()
        }
        best, score, default_score = choose(scores, axes, default)
        section = {
            **asdict(best),
            "tuned_on": self.split,
            "n_images": len(self.collected[False][0]),
            "objective": "competition dice (mean over images; empty truth and empty mask score 1)",
            "validation_dice_default": round(default_score, 6),
            "validation_dice_tuned": round(score, 6),
            "default": asdict(default),
            "grid": {
                "pred_threshold": list(axes[0]),
                "pred_threshold_low": list(axes[1]),
                "min_pred_area_fraction": list(axes[2]),
                "tta": sorted(self.collected),
            },
            "source_sha256": file_sha256(self.checkpoint),
        }
        update_metrics_file(self.metrics_file, **{SECTION: section})
        change = ", ".join(
            f"{k} {getattr(default, k)} -> {v}" for k, v in asdict(best).items() if getattr(default, k) != v
        )
        logger.info(
            "post-processing tuned on %d %s images: dice %.4f -> %.4f (%s)",
            section["n_images"], self.split, default_score, score, change or "defaults kept",
        )  # fmt: skip
        return section


__all__ = [
    "Postprocessing",
    "PostprocessingTuner",
    "choose",
    "default_setting",
    "grid_scores",
    "tuned_setting",
]
