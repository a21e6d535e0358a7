"""metrics.json writers: status life cycle, NaN as null, and the best score surviving a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from common.training.handlers import EvaluationMetricsWriter, TrainingMetricsWriter
from common.training.precision import processor
from common.utils.metrics import read_metrics_file


def _evaluator(dice: float, trainer_epoch=lambda: 1) -> Engine:
    """An evaluator that reports ``dice`` and keeps MONAI's best-metric bookkeeping."""
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def set_metrics(e: Engine) -> None:
        e.state.metrics = {"dice": dice, "dice_positive": float("nan"), "iou": dice / 2}
        if e.state.best_metric_epoch == -1 or dice > e.state.best_metric:
            e.state.best_metric, e.state.best_metric_epoch = dice, trainer_epoch()

    engine.state.best_metric, engine.state.best_metric_epoch = -1, -1
    return engine


def test_status_life_cycle_and_nan(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    evaluator = _evaluator(0.4)
    trainer = Engine(lambda e, b: evaluator.run([0]))
    TrainingMetricsWriter(evaluator, str(path), extra={"seed": 3}).attach(trainer)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(read_metrics_file(path)))
    trainer.run([0], max_epochs=1)
    assert seen[0]["training"]["status"] == "running" and seen[0]["validation"] is None
    final = read_metrics_file(path)
    assert final["training"] == {
        "status": "complete",
        "epochs_trained": 1,
        "max_epochs": 1,
        "key_metric": "dice",
        # a plain ignite engine: fp32, on this machine's CPU
        "arithmetic": {"precision": "fp32", "torch_threads": torch.get_num_threads(), **processor("cpu")},
        "seed": 3,
    }
    assert final["validation"]["dice"] == 0.4 and final["validation"]["dice_positive"] is None


def test_failure_is_recorded_and_raised(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"

    def boom(engine: Engine, batch: object) -> None:
        raise RuntimeError("out of memory")

    trainer = Engine(boom)
    TrainingMetricsWriter(_evaluator(0.1), str(path)).attach(trainer)
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.run([0], max_epochs=1)
    assert read_metrics_file(path)["training"]["status"] == "failed"
    assert "out of memory" in read_metrics_file(path)["training"]["error"]


def test_resume_keeps_the_better_model(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    net = torch.nn.Linear(2, 1)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    best_before = (tmp_path / "model.pt").read_bytes()
    path.write_text('{"validation": {"dice": 0.5, "best_epoch": 1}}')
    holder: dict[str, Engine] = {}
    evaluator = _evaluator(0.3, lambda: holder["trainer"].state.epoch)  # the epoch after resuming is worse
    saver = CheckpointSaver(
        str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )
    saver.attach(evaluator)
    trainer = holder["trainer"] = Engine(lambda e, b: evaluator.run([0]))
    writer = TrainingMetricsWriter(evaluator, str(path), best_saver=saver)
    writer.attach(trainer)
    # as the config's CheckpointLoader does: attached after the writer, restores the epoch count at STARTED
    trainer.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "epoch", 1))
    trainer.run([0], max_epochs=2)
    assert (tmp_path / "model.pt").read_bytes() == best_before
    assert read_metrics_file(path)["validation"]["dice"] == 0.5


def test_evaluation_section_keeps_training(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text('{"training": {"status": "complete"}}')
    evaluator = _evaluator(0.7)
    evaluator.state.dataloader = [0, 1, 2]
    EvaluationMetricsWriter(str(path), "test", checkpoint="m.pt").attach(evaluator)
    evaluator.run([0, 1, 2])
    doc = read_metrics_file(path)
    assert doc["training"]["status"] == "complete"
    assert doc["test"]["dice"] == 0.7 and doc["test"]["checkpoint"] == "m.pt"


def test_collapse_to_blank_is_flagged_after_the_patience(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Positive-only Dice 0 for three validations in a row (a validation without positives, NaN, neither
    starts nor breaks the run): a warning and ``collapse`` in metrics.json; a lesion found again clears it."""
    path = tmp_path / "metrics.json"
    positive_dice = iter([0.2, 0.0, float("nan"), 0.0, 0.0, 0.0, 0.1])
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def set_metrics(e: Engine) -> None:
        e.state.metrics = {"dice": 0.6, "dice_positive": next(positive_dice), "iou": 0.5}
        e.state.best_metric, e.state.best_metric_epoch = 0.6, 1

    evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1, -1
    trainer = Engine(lambda e, b: None)

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(e: Engine) -> None:  # as MONAI's ValidationHandler: the evaluator runs at the trainer's epoch
        evaluator.run([0])
        evaluator.state.epoch = e.state.epoch

    TrainingMetricsWriter(evaluator, str(path), collapse_patience=3).attach(trainer)
    flags = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: flags.append(read_metrics_file(path)["collapse"]))
    with caplog.at_level("WARNING", logger="common.training.handlers"):
        trainer.run([0], max_epochs=7)
    assert flags[:4] == [None, None, None, None]  # epochs 2 and 4 blank, 3 without positives: two rounds
    assert flags[4] == {"since_epoch": 2, "rounds": 3} and flags[5] == {"since_epoch": 2, "rounds": 4}
    assert flags[6] is None  # found a lesion again
    assert len([r for r in caplog.records if "collapsed to blank" in r.getMessage()]) == 1
