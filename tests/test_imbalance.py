"""Imbalanced lesion data (issue 16): the defaults must not save a blank model.

A synthetic set made here: 240 textured 64x64 images, 15 % with one small bright ellipse (about 1 % of the
image; every image also has two dark distractor blobs). With the former defaults (checkpoint kept on the
competition Dice, plain shuffling) the baseline collapses to predicting nothing and keeps that checkpoint;
with today's defaults (``dice_hmean`` checkpoints, ``pos_sample_rate`` 0.8 -> 0.4) it finds the lesions.
Both are judged on the saved checkpoint's positive-only Dice on the test split, not on the training curve.
Also: the sampler's schedule, seeding, sharding and resume, and the metric that an empty predictor cannot win.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from common.data.sampling import (
    PositiveRateSampler,
    class_weights,
    item_positive,
    labelled_sampler,
    rate_setting,
    scheduled_rate,
)
from common.training.metrics import LesionDiceMetric
from common.utils.metrics import BLANK_POSITIVE_DICE
from common.utils.settings import LOSS_NAMES
from tests.conftest import BASELINE, copy_bundle, read_json, run_bundle


def make_imbalanced_set(out: Path, n: int = 240, size: int = 64, positive_share: float = 0.15, seed: int = 0) -> Path:
    """``images/`` + ``masks/`` PNGs: textured background, two dark blobs each, a small bright lesion in some."""
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    positive = np.random.default_rng(seed).permutation(np.arange(n) < round(n * positive_share))
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        texture = gaussian_filter(rng.standard_normal((size, size)), 1.5)
        image = 0.5 + 0.12 * texture / texture.std()
        mask = np.zeros((size, size), np.uint8)
        if positive[i]:
            cy, cx = rng.uniform(12, size - 12, 2)
            ry, rx = rng.uniform(2.5, 4.5, 2)
            lesion = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            image[lesion] += 0.3
            mask[lesion] = 255
        for _ in range(2):
            cy, cx = rng.uniform(8, size - 8, 2)
            image[((yy - cy) / 2.5) ** 2 + ((xx - cx) / 2.5) ** 2 <= 1] -= 0.3
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(out / "images" / f"case{i:03d}.png")
        Image.fromarray(mask).save(out / "masks" / f"case{i:03d}.png")
    return out


def _train_and_test(dataset: Path, root: Path, *overrides: str) -> dict:
    """Train the baseline (30 epochs at 64 px), evaluate its saved checkpoint on the test split."""
    bundle = copy_bundle("baseline", root)
    common = ["--bundle_root", str(bundle), "--dataset_dir", str(dataset), "--num_workers", "0", *overrides]
    train = ["--image_size", "64", "--batch_size", "8", "--epochs", "30", "--val_interval", "2"]
    run_bundle([bundle / "configs" / "train.json"], *common, *train, cwd=bundle)
    configs = [bundle / "configs" / "train.json", bundle / "configs" / "evaluate.json"]
    run_bundle(configs, *common, cwd=bundle)
    return read_json(bundle / "models" / "metrics.json")


@pytest.mark.slow
def test_former_defaults_save_a_blank_model_and_todays_do_not(tmp_path: Path) -> None:
    dataset = make_imbalanced_set(tmp_path / "data")
    former_settings = ("--checkpoint_metric", "dice", "--pos_sample_rate", "off", "--output_prior", "off")
    former = _train_and_test(dataset, tmp_path / "former", *former_settings)
    assert former["test"]["dice_positive"] < BLANK_POSITIVE_DICE  # blank: every positive test image missed
    assert former["test"]["dice"] > 0.8  # ... yet its competition Dice looks good (the negatives)
    assert former["collapse"] is not None  # and the handler said so
    today = _train_and_test(dataset, tmp_path / "today")
    assert today["training"]["key_metric"] == "dice_hmean"
    assert today["test"]["dice_positive"] > 0.3, today["test"]
    assert today["validation"]["dice_hmean"] > 0.3


# ----------------------------------------------------------------------------- the metric


def _masks(*specs: tuple[int, int]) -> torch.Tensor:
    """(B, 1, 8, 8) masks: per image (first row, last row) of foreground, (0, 0) for empty."""
    out = torch.zeros(len(specs), 1, 8, 8)
    for i, (a, b) in enumerate(specs):
        out[i, 0, a:b] = 1
    return out


def test_dice_hmean_gives_an_empty_or_an_everywhere_predictor_zero() -> None:
    label = _masks((0, 2), (0, 0), (0, 0), (0, 0))  # one positive, three negatives
    for pred, expected in (
        (_masks((0, 0), (0, 0), (0, 0), (0, 0)), 0.0),  # empty: competition Dice 0.75
        (_masks((0, 8), (0, 8), (0, 8), (0, 8)), 0.0),  # everywhere
        (_masks((0, 2), (0, 0), (0, 0), (0, 0)), 1.0),  # perfect
        (_masks((0, 2), (0, 1), (0, 0), (0, 0)), 2 * 1 * (2 / 3) / (1 + 2 / 3)),  # one false positive
    ):
        metric = LesionDiceMetric()
        metric(pred, label)
        assert metric.aggregate().item() == pytest.approx(expected)
    accuracy = LesionDiceMetric(summary="empty_accuracy")
    accuracy(_masks((0, 2), (0, 1), (0, 0), (0, 0)), label)
    assert accuracy.aggregate().item() == pytest.approx(2 / 3)


def test_dice_hmean_without_negatives_or_positives_is_the_other_part() -> None:
    metric = LesionDiceMetric()
    metric(_masks((0, 2), (0, 4)), _masks((0, 4), (0, 4)))  # positives only: Dice 2/3 and 1
    assert metric.aggregate().item() == pytest.approx((2 * 2 / 6 + 1) / 2)
    metric = LesionDiceMetric()
    metric(_masks((0, 0), (0, 1)), _masks((0, 0), (0, 0)))  # negatives only: one kept empty
    assert metric.aggregate().item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="summary must be one of"):
        LesionDiceMetric(summary="mean")


# ----------------------------------------------------------------------------- the sampler


def test_item_positive_reads_the_flag_the_rle_or_the_mask(tmp_path: Path) -> None:
    Image.fromarray(np.pad(np.full((2, 2), 255, np.uint8), 3)).save(tmp_path / "m.png")
    assert item_positive({"positive": True}) is True and item_positive({"rle": []}) is False
    assert item_positive({"rle": ["1 2"]}) is True and item_positive({"label": str(tmp_path / "m.png")}) is True
    assert item_positive({"image": "x.png"}) is None


def test_class_weights_and_schedule() -> None:
    weights = class_weights([True, False, False, False, None], 0.5)
    assert sum(weights) == pytest.approx(1.0)
    assert weights[0] == pytest.approx(0.4) and weights[1] == pytest.approx(0.4 / 3) and weights[4] == 0.2
    assert class_weights([False, False], 0.8) == [0.5, 0.5]  # no positive: the negatives take every draw
    assert scheduled_rate(0.8, 0.4, 1, 11) == 0.8 and scheduled_rate(0.8, 0.4, 11, 11) == pytest.approx(0.4)
    assert scheduled_rate(0.8, 0.4, 6, 11) == pytest.approx(0.6) and scheduled_rate(0.5, None, 7, 11) == 0.5


def _draws(sampler: PositiveRateSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_rate_seed_resume_and_shards() -> None:
    positive = [i % 10 == 0 for i in range(200)]  # 10 % positive
    dataset = list(range(200))
    sampler = PositiveRateSampler(dataset, positive, 0.8, 0.4, epochs=5, seed=3)
    first, last = _draws(sampler, 1), _draws(sampler, 5)
    assert len(first) == 200 and np.mean([positive[i] for i in first]) == pytest.approx(0.8, abs=0.08)
    assert np.mean([positive[i] for i in last]) == pytest.approx(0.4, abs=0.08)
    # a fresh sampler (a resumed run) draws epoch 5 exactly as the uninterrupted one did; another seed does not
    assert _draws(PositiveRateSampler(dataset, positive, 0.8, 0.4, epochs=5, seed=3), 5) == last
    assert _draws(PositiveRateSampler(dataset, positive, 0.8, 0.4, epochs=5, seed=4), 5) != last
    # two ranks (torchrun): each draws half an epoch from its own shard, the shards are disjoint
    ranks = [PositiveRateSampler(dataset, positive, 0.8, None, 5, 3, num_replicas=2, rank=r) for r in (0, 1)]
    draws = [_draws(s, 2) for s in ranks]
    assert [len(d) for d in draws] == [100, 100] and not set(draws[0]) & set(draws[1])
    with pytest.raises(ValueError, match="pos_sample_rate must be in"):
        PositiveRateSampler(dataset, positive, 1.5)


def test_labelled_sampler_off_by_default_and_from_dataset_items() -> None:
    from monai.data import Dataset

    data = Dataset([{"image": "a", "rle": ["1 2"]}, {"image": "b", "rle": []}])
    assert labelled_sampler(data, None) is None and labelled_sampler(data, "off", "Off") is None
    sampler = labelled_sampler(data, 1.0, epochs=2)
    assert isinstance(sampler, PositiveRateSampler) and set(_draws(sampler, 1)) == {0}


def test_samples_per_epoch_fixes_the_steps_whatever_the_dataset_size() -> None:
    """8 labelled items or 80: the same draws per epoch (a step budget), reproducible per (seed, epoch)."""
    from monai.data import Dataset

    small = Dataset([{"image": str(i), "positive": i % 2 == 0} for i in range(8)])
    large = Dataset([{"image": str(i), "positive": i % 2 == 0} for i in range(80)])
    for data in (small, large):
        rated = labelled_sampler(data, 0.5, samples_per_epoch=64)
        uniform = labelled_sampler(data, "off", samples_per_epoch=64, seed=3)
        assert len(rated) == 64 and len(_draws(rated, 2)) == 64 and len(list(uniform)) == 64
        again = labelled_sampler(data, "off", samples_per_epoch=64, seed=3)
        assert again is not None and uniform is not None
        assert _draws(again, 5) == _draws(uniform, 5) != _draws(uniform, 6)
    assert set(_draws(labelled_sampler(small, "off", samples_per_epoch=64), 1)) == set(range(8))
    assert len(labelled_sampler(large, 0.5)) == 80  # 0: one pass
    with pytest.raises(ValueError, match="needs pos_sample_rate under torchrun"):
        labelled_sampler(small, "off", distributed=True, samples_per_epoch=8)
    from common.utils.settings import check_settings

    with pytest.raises(SystemExit, match="samples_per_epoch"):
        check_settings(samples_per_epoch=-1)


def test_the_configs_offer_exactly_the_checked_losses() -> None:
    assert tuple(read_json(BASELINE / "configs" / "train.json")["losses"]) == LOSS_NAMES


def test_labelled_share_fixes_the_labelled_draws_whatever_the_pool_size() -> None:
    """The student's loader: 4 labelled + 96 unlabelled items draw 4 % labels naturally, 50 % with the share."""
    from monai.data import Dataset

    from common.utils.settings import check_settings

    flags: list[bool | None] = [True, False, False, False, *[None] * 96]
    natural, fixed = class_weights(flags, 0.5), class_weights(flags, 0.5, labelled_share=0.5)
    assert sum(natural[:4]) == pytest.approx(0.04) and sum(fixed[:4]) == pytest.approx(0.5)
    assert fixed[0] == pytest.approx(0.25) and fixed[1] == pytest.approx(0.25 / 3) and sum(fixed) == pytest.approx(1)
    assert class_weights([True, False], 0.5, labelled_share=0.3) == [0.5, 0.5]  # nothing unlabelled: all labelled
    assert class_weights([None, None], 0.5, labelled_share=0.3) == [0.5, 0.5]  # nothing labelled: all unlabelled
    data = Dataset([{"image": "p", "rle": ["1 2"]}, {"image": "n", "rle": []}] + [{"image": str(i)} for i in range(98)])
    for rate in (0.5, "off"):  # without a rate the labelled items are drawn alike within their share
        sampler = labelled_sampler(data, rate, samples_per_epoch=400, labelled_share=0.5, seed=1)
        draws = _draws(sampler, 1)
        assert np.mean([i < 2 for i in draws]) == pytest.approx(0.5, abs=0.08)
        assert np.mean([i == 0 for i in draws]) == pytest.approx(0.25, abs=0.07)
    natural_draws = _draws(labelled_sampler(data, 0.5, samples_per_epoch=400, labelled_share="natural", seed=1), 1)
    assert np.mean([i < 2 for i in natural_draws]) < 0.08
    assert check_settings(labelled_share="natural") and check_settings(labelled_share=0.25)
    for bad in (0, 1.5, "half"):
        with pytest.raises(SystemExit, match=f"--labelled_share {bad!r}: must be natural or a number in"):
            check_settings(labelled_share=bad)


def test_a_rate_is_switched_off_by_null_or_a_word() -> None:
    """MONAI's command line drops ``--pos_sample_rate None`` as "not given": "off" is the word for it."""
    from common.utils.settings import check_settings

    assert rate_setting(None) is None and rate_setting("off") is None and rate_setting("NULL") is None
    assert rate_setting(0.4) == 0.4 and rate_setting("0.4") == 0.4
    assert check_settings(pos_sample_rate="off", pos_sample_rate_final=None)
    with pytest.raises(SystemExit, match="--pos_sample_rate 'sometimes': must be a number in"):
        check_settings(pos_sample_rate="sometimes")
    with pytest.raises(SystemExit, match=r"--pos_sample_rate_final 1\.5: must be a number in"):
        check_settings(pos_sample_rate_final=1.5)
