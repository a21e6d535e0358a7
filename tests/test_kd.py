"""KD losses against hand-computed values and gradients; the ensemble; cached vs online soft targets."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from monai.transforms import Compose

from common.data.datalist import distillation_items, load_or_build_datalist
from common.data.transforms import LoadMaskd, LoadXrayd, MarkLabelledd
from common.distill.soft_targets import LoadSoftTargetd, SoftTargetCache
from common.distill.teachers import (
    TeacherEnsemble,
    TeacherSelectionError,
    exit_unless_selection,
    file_sha256,
    load_ensemble,
)
from common.training.engines import DistillationTrainer
from common.training.kd import DistillationLoss, kd_loss


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _hand(kind: str, z: float, p: float, t: float) -> tuple[float, float]:
    """Per-pixel value and d/dz of the KD loss, written out from the definitions."""
    q = _sig(z / t)
    if kind == "mse":
        value, grad = (q - p) ** 2, 2 * (q - p) * q * (1 - q) / t
    else:
        value = -(p * math.log(q) + (1 - p) * math.log(1 - q))
        if kind == "kl":
            value -= -(p * math.log(p) + (1 - p) * math.log(1 - p))
        grad = (q - p) / t
    return value * t * t, grad * t * t


@pytest.mark.parametrize("kind", ["bce", "kl", "mse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_loss_value_and_gradient_match_hand_computation(kind: str, temperature: float) -> None:
    zs, ps = [0.0, 2.0, -1.5, 3.0], [0.8, 0.3, 0.1, 0.95]
    logits = torch.tensor(zs, dtype=torch.float64).reshape(1, 1, 2, 2).requires_grad_(True)
    target = torch.tensor(ps, dtype=torch.float64).reshape(1, 1, 2, 2)
    loss = kd_loss(logits, target, kind, temperature)
    loss.backward()
    hand = [_hand(kind, z, p, temperature) for z, p in zip(zs, ps, strict=True)]
    assert loss.item() == pytest.approx(sum(v for v, _ in hand) / 4, rel=1e-5)
    assert logits.grad.flatten().tolist() == pytest.approx([g / 4 for _, g in hand], rel=1e-4)


def test_kd_loss_known_numbers_and_minimum() -> None:
    z, p = torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 0.8)
    assert kd_loss(z, p, "bce").item() == pytest.approx(math.log(2), rel=1e-6)
    assert kd_loss(z, p, "mse").item() == pytest.approx(0.09, rel=1e-6)
    # kl is zero when the student matches the target exactly
    match = torch.logit(torch.tensor([[[[0.3]]]]))
    assert kd_loss(match, torch.full_like(match, 0.3), "kl").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown kd loss"):
        kd_loss(z, p, "hinge")
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(z, p, "bce", 0.0)


def test_distillation_loss_applies_segmentation_to_labelled_images_only() -> None:
    calls = []

    def seg(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        calls.append(len(pred))
        return (pred - label).abs().mean()

    logits = torch.zeros(3, 1, 2, 2)
    soft = torch.full_like(logits, 0.5)
    label = torch.ones_like(logits)
    loss = DistillationLoss(seg, kind="bce", alpha=0.5)
    total, parts = loss(logits, soft, label, torch.tensor([1.0, 0.0, 1.0]))
    assert calls == [2]  # only the two labelled images
    assert parts["seg"].item() == pytest.approx(1.0)
    assert total.item() == pytest.approx(parts["kd"].item() + 0.5)
    total, parts = loss(logits, soft, label, torch.zeros(3))
    assert calls == [2] and parts["seg"].item() == 0.0 and total.item() == pytest.approx(parts["kd"].item())


class _Constant(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.value)


def test_ensemble_is_the_mean_of_teacher_probabilities() -> None:
    ensemble = TeacherEnsemble([_Constant(2.0), _Constant(-1.0), _Constant(0.0)], temperature=2.0)
    x = torch.zeros(1, 1, 4, 4)
    expected = (_sig(1.0) + _sig(-0.5) + _sig(0.0)) / 3
    assert torch.allclose(ensemble.probabilities(x), torch.full_like(x, expected))
    assert torch.allclose(torch.sigmoid(ensemble(x)), torch.full_like(x, expected), atol=1e-6)
    assert not ensemble.train().training  # teachers stay in eval mode


def test_max_ensemble_keeps_what_any_one_teacher_finds() -> None:
    """``combine="max"``: the voxel-wise maximum of the teachers' probabilities; an unknown rule is refused."""
    low, high = _Constant(-3.0), _Constant(1.0)
    ensemble = TeacherEnsemble([low, high, _Constant(-2.0)], temperature=2.0, combine="max")
    x = torch.zeros(1, 1, 4, 4)
    assert torch.allclose(ensemble.probabilities(x), torch.full_like(x, _sig(0.5)))
    mean = TeacherEnsemble([low, high, _Constant(-2.0)], temperature=2.0).probabilities(x)
    assert (mean < 0.5).all() and (ensemble.probabilities(x) > 0.5).all()  # the mean drops the lesion, max keeps it
    with pytest.raises(ValueError, match="combine must be one of mean, max, got 'vote'"):
        TeacherEnsemble([low], combine="vote")


def _unet() -> UNet:
    return UNet(2, 1, 1, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch")


def _selection(
    tmp_path: Path, n: int = 2, scores: list[float] | None = None, network: Callable[[], UNet] = _unet
) -> Path:
    entries = []
    for i in range(n):
        torch.manual_seed(i)
        path = tmp_path / f"teacher{i}.pt"
        torch.save(network().state_dict(), path)
        entries.append({"task": f"t{i}", "mode": "joint", "checkpoint": str(path), "sha256": file_sha256(path)})
        if scores:
            entries[-1].update(val=scores[i], val_dice_positive=0.1)
    selection = tmp_path / "teachers.json"
    selection.write_text(json.dumps({"teachers": entries}))
    return selection


def test_selection_problems_name_the_file_and_the_command(tmp_path: Path) -> None:
    with pytest.raises(TeacherSelectionError, match=r"teachers.json does not exist.*select_teachers.py"):
        load_ensemble(tmp_path / "teachers.json", _unet(), "cpu")
    selection = _selection(tmp_path)
    ensemble = load_ensemble(selection, _unet(), "cpu", tasks=["t1"])
    assert ensemble.tasks == ["t1"] and len(ensemble.teachers) == 1
    with pytest.raises(TeacherSelectionError, match=r"no teacher for \['t9'\]"):
        load_ensemble(selection, _unet(), "cpu", tasks=["t9"])
    torch.save({"changed": torch.zeros(1)}, tmp_path / "teacher1.pt")
    with pytest.raises(TeacherSelectionError, match=r"teacher1.pt has sha256 .* re-run `python scripts/select_"):
        load_ensemble(selection, _unet(), "cpu")
    (tmp_path / "teacher0.pt").unlink()
    with pytest.raises(SystemExit, match=r"error: teacher t0 .*teacher0.pt does not exist"):
        exit_unless_selection(selection)


def test_top_k_keeps_the_best_teachers_by_validation_score(tmp_path: Path) -> None:
    selection = _selection(tmp_path, n=4, scores=[0.3, 0.5, 0.2, 0.5])
    assert load_ensemble(selection, _unet(), "cpu", top_k=1).tasks == ["t1"]  # tie on val and dice: first listed
    assert load_ensemble(selection, _unet(), "cpu", top_k=3).tasks == ["t0", "t1", "t3"]  # in selection order
    assert load_ensemble(selection, _unet(), "cpu", top_k=0).tasks == ["t0", "t1", "t2", "t3"]
    assert load_ensemble(selection, _unet(), "cpu", tasks=["t0", "t2"], top_k=1).tasks == ["t0"]  # within the tasks
    (tmp_path / "teacher2.pt").unlink()  # a teacher left out is never read
    assert exit_unless_selection(selection, top_k=2) == 2
    with pytest.raises(SystemExit, match=r"error: teacher_top_k 5: there are 4 teacher\(s\) to choose from in .*use 0"):
        exit_unless_selection(selection, top_k=5)
    (tmp_path / "unscored").mkdir()
    unscored = _selection(tmp_path / "unscored", n=2)
    with pytest.raises(TeacherSelectionError, match=r"no validation score \('val'\).*re-run `python scripts/select"):
        load_ensemble(unscored, _unet(), "cpu", top_k=1)


def test_cached_and_online_soft_targets_agree(tiny_siim: Path, tmp_path: Path) -> None:
    datalist = load_or_build_datalist(str(tiny_siim), "", 0.5, 0, str(tmp_path / "cache"))
    items = distillation_items(datalist)
    assert len(items) == len(datalist["training_labelled"]) + len(datalist["training_unlabelled"])
    load = [LoadXrayd(), LoadMaskd()]
    ensemble = load_ensemble(_selection(tmp_path), _unet(), "cpu", temperature=2.0)
    cache = SoftTargetCache(load, tmp_path / "cache", batch_size=3)
    assert cache.fill(ensemble, items) == {"computed": len(items), "reused": 0}
    assert cache.fill(ensemble, items) == {"computed": 0, "reused": len(items)}  # second time: all from disk
    pipeline = Compose([*load, MarkLabelledd(), LoadSoftTargetd(cache)])
    flags = []
    for item in items[:3] + items[-3:]:
        d = pipeline(item)
        online = ensemble.probabilities(d["image"][None])[0]
        assert torch.allclose(torch.as_tensor(d["soft"]), online, atol=1e-3)  # float16 on disk
        assert d["label"].shape == d["image"].shape
        flags.append(float(d["labelled"]))
    assert 0.0 in flags and 1.0 in flags
    (tmp_path / "other").mkdir()
    other_teachers = load_ensemble(_selection(tmp_path / "other", n=1), _unet(), "cpu", temperature=2.0)
    other = SoftTargetCache(load, tmp_path / "cache")
    assert other.folder_for(other_teachers) != cache.folder  # another selection never reads these targets
    ensemble.combine = "max"
    assert other.folder_for(ensemble) != cache.folder  # nor another combination rule of the same teachers
    with pytest.raises(KeyError, match="no soft target"):
        other.load(items[0]["image"])


def test_a_soft_target_does_not_depend_on_which_images_were_missing(tiny_siim: Path, tmp_path: Path) -> None:
    """Student arms share the cache and fill it in any order: every target has the same bytes regardless (a
    batched convolution's last bits depend on the rest of its batch: enough, with a U-Net this wide, to flip
    float16 values of some pixels)."""
    datalist = load_or_build_datalist(str(tiny_siim), "", 0.5, 0, str(tmp_path / "cache"))
    items = distillation_items(datalist)
    load = [LoadXrayd(), LoadMaskd()]

    def wide() -> UNet:
        return UNet(2, 1, 1, channels=(16, 32, 64), strides=(2, 2), num_res_units=2)

    ensemble = load_ensemble(_selection(tmp_path, network=wide), wide(), "cpu")
    at_once = SoftTargetCache(load, tmp_path / "at_once", batch_size=8)
    at_once.fill(ensemble, items)
    in_parts = SoftTargetCache(load, tmp_path / "in_parts", batch_size=3)
    in_parts.fill(ensemble, items[1::4])  # another arm's images first, in other batches
    assert in_parts.fill(ensemble, items)["reused"] == len(items[1::4])
    for item in items:
        image = str(item["image"])
        assert Path(at_once.file_for(image)).read_bytes() == Path(in_parts.file_for(image)).read_bytes(), image


def test_trainer_uses_cached_targets_or_the_teachers_online(tmp_path: Path) -> None:
    from monai.engines.utils import default_prepare_batch

    ensemble = load_ensemble(_selection(tmp_path), _unet(), "cpu")
    images = torch.rand(2, 1, 16, 16)
    soft = ensemble.probabilities(images)
    batch = {"image": images, "label": torch.zeros_like(images), "soft": soft, "labelled": torch.tensor([1.0, 0.0])}
    losses = {}
    for mode in ("cached", "online"):
        torch.manual_seed(0)
        student = _unet()
        trainer = DistillationTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=[batch],
            network=student,
            optimizer=torch.optim.SGD(student.parameters(), lr=0.0),
            loss_function=DistillationLoss(torch.nn.functional.l1_loss),
            ensemble=ensemble if mode == "online" else None,
            prepare_batch=default_prepare_batch,
            decollate=False,
        )
        trainer.run()
        losses[mode] = (trainer.state.output["kd_loss"].item(), trainer.state.output["seg_loss"].item())
    assert losses["cached"] == pytest.approx(losses["online"], rel=1e-6)
    assert np.isfinite(losses["cached"]).all()
