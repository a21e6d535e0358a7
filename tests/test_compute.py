"""The cost of every stage (wall and CPU time per bundle command, summed per run) and the pretext curves."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pipeline import compute
from pipeline.pretext_curves import plateau, plot_curves, pretraining_curves
from pipeline.runner import _run_measured


def test_resumed_segments_add_up_and_runs_average(tmp_path: Path) -> None:
    compute.record(tmp_path, "fold0-rotation_joint-train", "f0.json", 60.0, 100.0)
    compute.record(tmp_path, "fold0-rotation_joint-train", "f0.json", 36.0, 50.0)  # resumed after a kill
    compute.record(tmp_path, "fold1-rotation_joint-train", "f1.json", 60.0, 50.0)
    compute.record(tmp_path, "seed0-rotation_pretrain-pretrain", "pool.json", 120.0, 240.0)
    compute.record(tmp_path, "fold0-distill-ensemble_test", "f0.json", 6.0, 12.0)
    records, bad = compute.read(tmp_path)
    summary = compute.summarise(records)
    assert bad == 0
    assert summary["rotation_joint"]["train"] == {
        "cpu_min": 1.67,
        "wall_min": 1.3,
        "runs": 2,
    }  # (150+50)/2, (96+60)/2 s
    assert summary["rotation_pretrain"]["pretrain"] == {"cpu_min": 4.0, "wall_min": 2.0, "runs": 1}
    assert summary["distill"]["ensemble_test"]["runs"] == 1
    table = compute.compute_table(summary)
    assert "| rotation_joint | - | 1.7 (1.3) | - |" in table
    assert "| rotation_pretrain | 4.0 (2.0) | - | - |" in table
    assert "| distill | - | - | 0.2 (0.1) |" in table


def test_a_fresh_start_replaces_the_runs_earlier_lines(tmp_path: Path) -> None:
    """A model retrained from scratch (its settings changed) costs one training, not the old one plus the new;
    a resumed segment still adds, and lines without the mark (older logs) add up as before."""
    compute.record(tmp_path, "fold0-distill-train", "f0.json", 200.0, 200.0, fresh=True)  # the first training
    compute.record(tmp_path, "fold0-distill-test", "f0.json", 5.0, 5.0, fresh=True)
    compute.record(tmp_path, "fold0-distill-train", "f0.json", 100.0, 120.0, fresh=True)  # retrained...
    compute.record(tmp_path, "fold0-distill-train", "f0.json", 50.0, 60.0)  # ...killed, resumed
    compute.record(tmp_path, "fold0-distill-test", "f0.json", 6.0, 6.0, fresh=True)  # the new model evaluated
    compute.record(tmp_path, "fold1-distill-train", "f1.json", 30.0, 30.0)  # an older log: no mark
    compute.record(tmp_path, "fold1-distill-train", "f1.json", 30.0, 30.0)
    costs = {(r["stage"], r["cpu_s"], r["wall_s"]) for r in compute.per_run(compute.read(tmp_path)[0])}
    assert costs == {("train", 180.0, 150.0), ("test", 6.0, 6.0), ("train", 60.0, 60.0)}


def test_a_summary_of_some_runs_keeps_theirs_and_their_seeds_pretraining(tmp_path: Path) -> None:
    """One output folder logs every sitting: fold 4's summary must not count folds 0-3 or another seed."""
    for seed in (0, 1):
        compute.record(tmp_path, f"seed{seed}-rotation_pretrain-pretrain", f"store/seed{seed}/pool.json", 60.0, 120.0)
        for fold in range(5):
            datalist = f"runs/n16/seed{seed}/fold{fold}/datalist.json"
            compute.record(tmp_path, f"fold{fold}-baseline-train", datalist, 60.0, 60.0 * (fold + 1))
    compute.record(tmp_path, "fold0-baseline-train", "elsewhere/f0.json", 1.0, 1.0)  # not the pipeline's layout
    runs = compute.per_run(compute.read(tmp_path)[0])
    assert len(runs) == 13 and {r["run"] for r in runs if r["model"] == "baseline"} == {
        None,
        *(f"{s}/fold{f}" for s in (0, 1) for f in range(5)),
    }
    fold4 = compute.of_runs(runs, ["0/fold4"])
    assert sorted(r["run"] for r in fold4) == ["0", "0/fold4"]
    summary = compute.summarise_runs(fold4)
    assert summary["baseline"]["train"] == {"cpu_min": 5.0, "wall_min": 1.0, "runs": 1}
    assert summary["rotation_pretrain"]["pretrain"] == {"cpu_min": 2.0, "wall_min": 1.0, "runs": 1}
    assert compute.summarise_runs(compute.of_runs(runs, ["0/fold0", "0/fold1"]))["baseline"]["train"]["runs"] == 2
    assert compute.run_of("runs/n8/seed3/datalist.json") == "3"  # a run without folds


def test_a_line_cut_by_a_kill_is_counted_not_fatal(tmp_path: Path) -> None:
    compute.record(tmp_path, "fold0-baseline-train", "f0.json", 1.0, 2.0)
    with open(tmp_path / compute.COMPUTE_FILE, "a") as f:
        f.write('{"log": "fold0-baseline-te')
    records, bad = compute.read(tmp_path)
    assert len(records) == 1 and bad == 1


def test_a_log_name_that_is_not_the_pipelines_is_refused() -> None:
    with pytest.raises(ValueError, match="not <split>-<model>-<stage>"):
        compute.model_and_stage("train")


def test_the_runner_measures_the_commands_cpu_time(tmp_path: Path) -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nraise SystemExit(3)"
    with open(tmp_path / "log", "w") as log:
        code, wall_s, cpu_s = _run_measured([sys.executable, "-c", busy], dict(os.environ), log)
    assert code == 3
    assert cpu_s >= 0.3 and wall_s >= 0.3


def test_pretext_curves_are_read_per_epoch_the_resumed_value_winning(tmp_path: Path) -> None:
    lines = [f"2026-12-02 04:53:29,209 - INFO - Epoch[{e}] Metrics -- aux_loss: {1.0 / e:.4f} " for e in range(1, 11)]
    lines.append("2026-12-02 05:00:00,000 - INFO - Epoch[10] Metrics -- aux_loss: 0.0500 ")  # resumed: logged again
    (tmp_path / "seed0-rotation_pretrain-pretrain.log").write_text("\n".join(lines))
    (tmp_path / "fold0-rotation_pretrain-train.log").write_text(lines[0])
    curves = pretraining_curves(tmp_path)
    assert list(curves) == ["seed0 rotation_pretrain"]
    curve = curves["seed0 rotation_pretrain"]
    assert len(curve) == 10 and curve[0] == 1.0 and curve[-1] == 0.05
    assert plateau(curve) == pytest.approx((sum(curve[5:]) / 5 - sum(curve[:5]) / 5) / (sum(curve[:5]) / 5))
    assert plateau(curve[:9]) is None
    plot_curves(curves, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
