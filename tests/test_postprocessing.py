"""Post-processing tuned on validation (``configs/tune.json``, ``common.training.tuning``) and flip TTA.

The grid's scores must be what the bundle's own evaluation measures (MONAI transforms + DiceMetric), the
optimum is found where it is known, the defaults win ties, a retrained model does not inherit a tuning, and
``evaluate.json``/``inference.json`` apply the tuned values (and ``use_tuned false`` the defaults).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric
from monai.transforms import Activationsd, AsDiscreted, Compose, CopyItemsd, DeleteItemsd

from common.data.transforms import EmptySmallMaskd
from common.training.inferers import FlipTTAInferer
from common.training.tuning import (
    Postprocessing,
    _axes,
    choose,
    grid_scores,
    tuned_setting,
)
from common.utils.metrics import update_metrics_file
from tests.conftest import copy_bundle, read_json, run_bundle, tiny_train_overrides

SIZE = 32


def _disc(radius: float, centre: tuple[float, float] = (16, 16)) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _known_optimum() -> tuple[torch.Tensor, torch.Tensor]:
    """Positives: a confident core (0.95) inside a faint rim (0.25) that is lesion too; negatives: a small
    confident speck (0.95, 1 pixel = 0.001 of the image); background 0.15. Only a low threshold of 0.2 keeps
    the rim and drops the background, and only a minimum area above the speck's clears the negatives."""
    probs, labels = [], []
    for i in range(12):
        prob = np.full((SIZE, SIZE), 0.15, np.float32)
        label = np.zeros((SIZE, SIZE), bool)
        if i % 2 == 0:
            label = _disc(6)
            prob[label] = 0.25
            prob[_disc(4)] = 0.95  # about 49 pixels: 0.048 of the image
        else:
            prob[3, 3] = 0.95
        probs.append(prob.ravel())
        labels.append(label.ravel())
    return torch.from_numpy(np.stack(probs)), torch.from_numpy(np.stack(labels))


def test_the_grid_finds_the_known_optimum_and_the_defaults_lose() -> None:
    probs, labels = _known_optimum()
    default = Postprocessing(min_pred_area_fraction=0.0)
    axes = _axes(default)
    scores = grid_scores(probs, labels, *axes)
    best, score, default_score = choose({False: scores}, axes, default)
    assert score == pytest.approx(1.0) and default_score < 0.8
    assert best.pred_threshold_low == 0.2 and best.pred_threshold >= best.pred_threshold_low
    assert 1 / SIZE**2 < best.min_pred_area_fraction <= 49 / SIZE**2
    assert torch.isnan(scores[axes[0].index(0.3), axes[1].index(0.9)]).all()  # low above the threshold: no setting


def test_the_defaults_win_ties_and_tta_must_help_strictly() -> None:
    probs, labels = _known_optimum()
    default = Postprocessing(pred_threshold=0.5, pred_threshold_low=0.2, min_pred_area_fraction=0.004)
    axes = _axes(default)
    scores = grid_scores(probs, labels, *axes)
    best, score, default_score = choose({False: scores, True: scores.clone()}, axes, default)
    assert best == default and score == default_score == pytest.approx(1.0)


def test_grid_scores_equal_the_monai_transforms_and_dice_metric() -> None:
    """Every grid point scores what AsDiscreted + EmptySmallMaskd(score_key) + DiceMetric(ignore_empty=False)
    give on the same probabilities: the tuner optimises exactly what evaluation reports."""
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 2, (10, 1, SIZE, SIZE)).astype(np.float32))
    logits[::3] -= 6  # some nearly empty predictions
    labels = torch.from_numpy(np.stack([_disc(r)[None] for r in (0, 3, 5, 0, 7, 2, 0, 4, 6, 0)]).astype(np.float32))
    probs = torch.sigmoid(logits)
    axes = ((0.4, 0.7), (0.3, 0.4), (0.0, 0.01, 0.05))
    scores = grid_scores(probs.flatten(1), labels.flatten(1), *axes)
    metric = DiceMetric(include_background=True, ignore_empty=False)
    for i, threshold in enumerate(axes[0]):
        for j, low in enumerate(axes[1]):
            for k, area in enumerate(axes[2]):
                post = Compose([
                    Activationsd("pred", sigmoid=True),
                    CopyItemsd("pred", names="pred_score"),
                    AsDiscreted("pred", threshold=low),
                    EmptySmallMaskd("pred", area, score_key="pred_score", score_threshold=threshold),
                    DeleteItemsd("pred_score"),
                ])  # fmt: skip
                preds = torch.stack([post({"pred": x})["pred"] for x in logits])
                metric.reset()
                metric(preds, labels)
                assert float(scores[i, j, k]) == pytest.approx(float(metric.aggregate()), abs=1e-6)


def test_flip_tta_averages_the_mirrored_logits() -> None:
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    x = torch.rand(2, 1, 8, 8)
    plain, tta = FlipTTAInferer(enabled=False)(x, net), FlipTTAInferer()(x, net)
    assert torch.equal(plain, net(x))
    assert torch.allclose(tta, (net(x) + torch.flip(net(torch.flip(x, dims=(3,))), dims=(3,))) / 2)
    mirror_invariant = torch.nn.Identity()
    assert torch.allclose(FlipTTAInferer()(x, mirror_invariant), (x + x) / 2)


def test_a_tuning_applies_to_its_own_model_only(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    from common.utils.io import file_sha256

    update_metrics_file(
        tmp_path / "metrics.json", postprocessing={"pred_threshold": 0.7, "source_sha256": file_sha256(model)}
    )
    assert tuned_setting(model, "pred_threshold", 0.5) == 0.7
    assert tuned_setting(model, "pred_threshold", 0.5, use_tuned=False) == 0.5
    assert tuned_setting(model, "tta", False) is False  # not tuned: the default
    model.write_bytes(b"retrained")
    assert tuned_setting(model, "pred_threshold", 0.5) == 0.5


def test_tune_json_then_evaluate_and_inference_apply_it(tiny_siim: Path, tmp_path: Path) -> None:
    """A trained bundle tuned on validation: evaluate.json on validation reproduces the tuner's score with
    the tuned values and the default score with ``use_tuned false``; inference.json runs with them."""
    bundle = copy_bundle("baseline", tmp_path / "baseline")
    configs = bundle / "configs"
    tiny = tiny_train_overrides(tiny_siim, bundle, epochs=2)
    run_bundle([configs / "train.json"], *tiny, cwd=tmp_path)
    base = [configs / "train.json", configs / "evaluate.json"]
    run_bundle([*base, configs / "tune.json"], *tiny, cwd=tmp_path)
    tuned = read_json(bundle / "models" / "metrics.json")["postprocessing"]
    assert tuned["n_images"] > 0 and tuned["validation_dice_tuned"] >= tuned["validation_dice_default"]
    for use_tuned, expected in (("True", "validation_dice_tuned"), ("False", "validation_dice_default")):
        run_bundle(
            base,
            *tiny,
            "--eval_split",
            "validation",
            "--eval_name",
            f"v{use_tuned}",
            "--use_tuned",
            use_tuned,
            cwd=tmp_path,
        )
        measured = read_json(bundle / "models" / "metrics.json")[f"v{use_tuned}"]["dice"]
        assert measured == pytest.approx(tuned[expected], abs=1e-5)
    out, images = tmp_path / "masks", tiny_siim / "dicom-images-train"
    inference = ["--bundle_root", str(bundle), "--input_dir", str(images), "--output_dir", str(out)]
    run_bundle([configs / "inference.json"], *inference, cwd=tmp_path)
    assert len(list(out.rglob("*.png"))) == len(list(images.rglob("*.dcm")))
