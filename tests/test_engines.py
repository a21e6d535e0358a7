"""Joint and pre-training engines on real MONAI trainers: which parameters move, losses recorded."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceFocalLoss
from monai.networks.nets import UNet

from common.ssl import create_task
from common.training.engines import MultiTaskTrainer, PretextTrainer
from common.training.networks import MultiTaskUNet, seg_head_prefix


def _data(n: int, labelled: bool) -> list[dict]:
    g = torch.Generator().manual_seed(n)
    items = []
    for _ in range(n):
        image = torch.rand(1, 32, 32, generator=g)
        item = {"image": image}
        if labelled:
            item["label"] = (image > 0.7).float()
        items.append(item)
    return items


def _model(*tasks: str) -> MultiTaskUNet:
    torch.manual_seed(0)
    unet = UNet(2, 1, 1, (8, 16, 32), (2, 2), num_res_units=1, norm="batch")
    return MultiTaskUNet(unet, {t: create_task(t) for t in tasks})


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _moved(before: dict[str, torch.Tensor], module: torch.nn.Module, prefix: str) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.named_parameters() if k.startswith(prefix))


@pytest.mark.parametrize("tasks", [("rotation",), ("genesis",), ("rotation", "jigsaw", "inpainting")])
def test_joint_mode_changes_seg_and_aux_parameters(tasks: tuple[str, ...]) -> None:
    model = _model(*tasks)
    before = _snapshot(model)
    trainer = MultiTaskTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(Dataset(_data(4, True)), batch_size=2),
        aux_data_loader=DataLoader(Dataset(_data(3, False)), batch_size=2, shuffle=True),
        network=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        loss_function=DiceFocalLoss(sigmoid=True),
        task_weights={t: 0.5 for t in tasks},
    )
    trainer.run()
    assert trainer.state.iteration == 2  # the labelled loader sets the epoch; the aux loader cycles
    assert _moved(before, model, "seg_net." + seg_head_prefix(model.seg_net))  # segmentation head trained
    for t in tasks:
        assert _moved(before, model, f"heads.{t}.")  # every auxiliary head trained
    out = trainer.state.output[0]  # decollated: the batch's values, per sample
    assert {"seg_loss", "aux_loss"} <= set(out) and all(f"aux_loss/{t}" in out for t in tasks)
    expected = out["seg_loss"] + sum(0.5 * out[f"aux_loss/{t}"] for t in tasks)
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_pretraining_mode_leaves_the_segmentation_head_alone() -> None:
    model = _model("inpainting")
    before = _snapshot(model)
    trainer = PretextTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=DataLoader(Dataset(_data(6, False)), batch_size=3),
        network=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        task_weights={"inpainting": 1.0},
    )
    trainer.run()
    assert trainer.state.iteration == 4
    assert not _moved(before, model, "seg_net." + seg_head_prefix(model.seg_net))
    assert _moved(before, model, "seg_net.model.0.") and _moved(before, model, "heads.inpainting.")
    assert "aux_loss/inpainting" in trainer.state.output[0]


def test_weights_for_unknown_tasks_are_refused() -> None:
    model = _model("rotation")
    with pytest.raises(KeyError, match="without a head"):
        PretextTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=[],
            network=model,
            optimizer=torch.optim.Adam(model.parameters()),
            task_weights={"jigsaw": 1.0},
        )


def test_an_empty_auxiliary_loader_is_an_error_not_a_hang() -> None:
    from common.training.engines import cycle

    with pytest.raises(ValueError, match="yields no batch"):
        next(cycle(DataLoader(Dataset(_data(1, False)), batch_size=2, drop_last=True)))


def test_auxiliary_passes_leave_batch_norm_running_statistics_alone() -> None:
    from common.training.engines import AuxiliaryObjective

    model = _model("genesis").train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    loss, _ = AuxiliaryObjective(model, {"genesis": 1.0})(model, torch.rand(4, 1, 32, 32))
    loss.backward()
    after = model.state_dict()
    assert stats and all(torch.equal(after[k], v) for k, v in stats.items())  # the batch counters too
    model(torch.rand(4, 1, 32, 32))  # the segmentation pass still updates them
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.momentum == 0.1 and m.track_running_stats for m in norms)


def test_random_layers_of_the_auxiliary_pass_leave_the_global_stream_alone() -> None:
    from common.training.engines import AuxiliaryObjective

    model = MultiTaskUNet(UNet(2, 1, 1, (8, 16), (2,), dropout=0.5), {"genesis": create_task("genesis")}).train()
    objective = AuxiliaryObjective(model, {"genesis": 1.0})
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first, _ = objective.losses(model, torch.rand(2, 1, 32, 32), rng_apart=True)
    assert not torch.equal(torch.get_rng_state(), state)  # torch.rand drew from it ...
    torch.manual_seed(5)
    torch.rand(2, 1, 32, 32)
    expected = torch.get_rng_state()
    torch.manual_seed(5)
    objective.losses(model, torch.rand(2, 1, 32, 32), rng_apart=True)
    assert torch.equal(torch.get_rng_state(), expected)  # ... the dropout of the pass did not
    objective.load_state_dict({"state": None})
    torch.manual_seed(5)
    again, _ = objective.losses(model, torch.rand(2, 1, 32, 32), rng_apart=True)
    assert torch.equal(first["genesis"], again["genesis"])  # the masks come from the pretext stream
