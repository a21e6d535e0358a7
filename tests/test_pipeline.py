"""The whole-protocol runner on tiny data: every step, the report, then a rerun that trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.run_pipeline import main as run_pipeline
from scripts.run_pipeline import stage1_names


def test_stage1_names_follow_tasks_and_skip() -> None:
    assert stage1_names(["rotation"], []) == ["baseline", "rotation_joint", "rotation_pretrain", "multitask_joint"]
    assert stage1_names(["jigsaw"], ["multitask_joint", "baseline"]) == ["jigsaw_joint", "jigsaw_pretrain"]


@pytest.mark.slow
def test_pipeline_end_to_end_then_resumes_without_training(
    tiny_siim: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = [
        "--dataset-dir", str(tiny_siim), "--out", str(out), "--scale", "demo", "--labelled-fraction", "0.5",
        "--tasks", "rotation", "--skip", "multitask_joint", "--jobs", "1",
        "--set", "epochs=1", "pretrain_epochs=1", "val_interval=1", "num_workers=0",
    ]  # fmt: skip
    assert run_pipeline(args) == 0
    first = capsys.readouterr().out
    for name in ("baseline", "rotation_joint", "rotation_pretrain", "distill"):
        assert f"{name}: trained" in first
        metrics = json.loads((out / "seed0" / name / "models" / "metrics.json").read_text())
        assert metrics["training"]["status"] == "complete" and "test" in metrics
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert {"baseline", "teacher rotation", "teacher ensemble", "student (distill)"} <= set(summary)
    assert results["selection"]["0"]["rotation"] in ("joint", "pretrain")
    report = (out / "report.md").read_text()
    for row in ("baseline", "student (distill)", "teacher ensemble"):
        assert f"| {row}" in report
        assert f"{summary[row]['test_dice']['mean']:.3f}" in report  # the report shows results.json's numbers
    for figure in ("test_dice.png", "curves.png", "overlays.png"):
        assert (out / figure).stat().st_size > 1000 and f"({figure})" in report

    assert run_pipeline(args) == 0  # everything current: nothing retrained or re-evaluated
    second = capsys.readouterr().out
    assert "trained" not in second.replace("untrained", "") and "evaluated" not in second
    assert second.count(": current") == 4 + 5  # four trainings, five evaluations (with the ensemble)
