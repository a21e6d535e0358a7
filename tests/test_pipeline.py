"""The whole-protocol runner on tiny data: every step, the report, then a rerun that trains nothing."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from pathlib import Path

import pytest

from pipeline.paths import portable, portable_command, portable_path, without_dirs
from pipeline.protocol import stage1_names
from pipeline.scales import parse_overrides
from pipeline.steps import Step, fingerprint
from pipeline.sweep import same_setting
from scripts.compare_pretraining import main as compare_pretraining
from scripts.run_pipeline import main as run_pipeline
from scripts.sweep_lambda import main as sweep_lambda
from tests.conftest import REPO


def test_stage1_names_follow_tasks_and_skip() -> None:
    assert stage1_names(["rotation"], []) == [
        "baseline", "rotation_joint", "rotation_pretrain", "multitask_joint", "mean_teacher",
    ]  # fmt: skip
    skip = ["multitask_joint", "baseline", "mean_teacher"]
    assert stage1_names(["jigsaw"], skip) == ["jigsaw_joint", "jigsaw_pretrain"]


@pytest.mark.slow
def test_pipeline_end_to_end_then_resumes_without_training(
    tiny_siim: Path, tiny_multidomain: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = [
        "--dataset-dir", str(tiny_siim), "--out", str(out), "--scale", "demo", "--labelled-fraction", "0.5",
        "--tasks", "rotation", "hssl", "--skip", "multitask_joint", "hssl_joint", "--jobs", "1",
        "--set", "epochs=1", "pretrain_epochs=1", "val_interval=1", "num_workers=0", "output_prior=off",
        f"multidomain_datalist={tiny_multidomain}", "--publish", str(tmp_path / "published.json"),
    ]  # fmt: skip
    assert run_pipeline(args) == 0
    first = capsys.readouterr().out
    grids: dict = {}
    for name in ("baseline", "rotation_joint", "rotation_pretrain", "hssl_pretrain", "mean_teacher", "distill"):
        assert f"{name}: trained" in first
        metrics = json.loads((out / "seed0" / name / "models" / "metrics.json").read_text())
        assert metrics["training"]["status"] == "complete" and "test" in metrics and "test_tuned" in metrics
        assert metrics["training"]["arithmetic"]["torch_threads"] >= 1  # what the numbers were computed in
        tuned = metrics["postprocessing"]  # one tuning protocol for every model, the student's included
        assert tuned["tuned_on"] == "validation" and tuned["grid"] == grids.setdefault("grid", tuned["grid"])
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    rows = {"baseline", "teacher rotation", "teacher hssl", "mean_teacher", "teacher ensemble", "student (distill)"}
    assert rows <= set(summary)
    assert results["selection"]["0"]["rotation"] in ("joint", "pretrain")
    assert results["selection"]["0"]["hssl"] == "pretrain"  # the only hssl variant trained
    published = json.loads((tmp_path / "published.json").read_text())
    assert published["kind"] == "pipeline" and published["summary"] == summary and "--publish" in published["command"]
    assert len(results["settings"]["arithmetic"]["precision"]) == 1  # one precision for every model of the run
    # the per-run records stay (other sittings' folds merge with them: scripts/merge_results.py), run folders go
    assert published["per_seed"] == without_dirs(results["per_seed"]) and "dir" in results["per_seed"]["0"]["baseline"]
    report = (out / "report.md").read_text()
    for row in ("baseline", "mean_teacher", "student (distill)", "teacher ensemble"):
        assert f"| {row}" in report
        assert f"{summary[row]['test_dice']['mean']:.3f}" in report  # the report shows results.json's numbers
        if row != "teacher ensemble":
            assert f"| {summary[row]['test_tuned_dice']['mean']:.3f} |" in report
    for figure in ("test_dice.png", "curves.png", "overlays.png", "per_image.png"):
        assert (out / figure).stat().st_size > 1000 and f"({figure})" in report

    assert run_pipeline(args) == 0  # everything current: nothing retrained or re-evaluated
    second = capsys.readouterr().out
    assert "trained" not in second.replace("untrained", "") and "evaluated" not in second
    # six trainings, six tunings, seven evaluations (with the ensemble) and six with the tuned post-processing
    assert second.count(": current") == 6 + 6 + 7 + 6


@pytest.mark.slow
def test_lambda_sweep_over_two_seeds_writes_means_of_the_runs(tiny_siim: Path, tmp_path: Path) -> None:
    table_file = tmp_path / "sweep.json"
    args = [
        "--dataset-dir", str(tiny_siim), "--out", str(tmp_path / "sweep"), "--table", str(table_file),
        "--tasks", "rotation", "--lambdas", "0.1", "1", "--seeds", "0", "1", "--labelled-fraction", "0.5",
        "--jobs", "2", "--set", "epochs=1", "val_interval=1", "num_workers=0", "output_prior=off",
    ]  # fmt: skip
    assert sweep_lambda(args) == 0
    table = json.loads(table_file.read_text())
    rows = table["tasks"]["rotation"]
    assert [r["lambda"] for r in rows] == [0.1, 1.0] and table["baseline"]["n"] == 2
    for row in rows:
        runs = [tmp_path / "sweep" / f"seed{s}" / f"rotation_joint_lambda{row['lambda']:g}" for s in (0, 1)]
        metrics = [json.loads((r / "models" / "metrics.json").read_text()) for r in runs]
        assert all(m["config"]["aux_weights"] == {"rotation": row["lambda"]} for m in metrics)
        dice = [m["validation"]["dice"] for m in metrics]
        assert row["dice"] == pytest.approx(statistics.fmean(dice), abs=1e-4)
        assert row["dice_std"] == pytest.approx(statistics.stdev(dice), abs=1e-4)


@pytest.mark.slow
def test_pretraining_comparison_runs_three_arms(tiny_siim: Path, tiny_multidomain: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = [
        "--dataset-dir", str(tiny_siim), "--multidomain-datalist", str(tiny_multidomain), "--single-domains", "ct",
        "--fractions", "0.5", "--seeds", "0", "--jobs", "2", "--out", str(out), "--publish", str(tmp_path / "p.json"),
        "--set", "epochs=1", "pretrain_epochs=1", "val_interval=1", "num_workers=0", "output_prior=off",
    ]  # fmt: skip
    assert compare_pretraining(args) == 0
    results = json.loads((out / "comparison.json").read_text())
    assert set(results["summary"]["0.5"]) == {"scratch", "single-domain", "multi-domain"}
    runs = out / "labelled0.5" / "seed0"
    single = json.loads((runs / "single-domain" / "models" / "metrics.json").read_text())
    multi = json.loads((runs / "multi-domain" / "models" / "metrics.json").read_text())
    assert single["config"]["multidomain_domains"] == ["ct"] and multi["config"]["multidomain_domains"] is None
    assert single["pretraining"]["epochs"] == 1 and multi["pretraining"]["epochs"] == 1
    assert "pretraining" not in json.loads((runs / "scratch" / "models" / "metrics.json").read_text())
    for arm in ("scratch", "single-domain", "multi-domain"):
        assert results["summary"]["0.5"][arm]["test_dice"]["n"] == 1
    published = json.loads((tmp_path / "p.json").read_text())
    assert published["kind"] == "hssl_comparison" and "| 50% | multi-domain |" in published["table"]


def test_fingerprint_ignores_overrides_a_bundle_does_not_have(tmp_path: Path) -> None:
    def fp(bundle: str, **extra: str) -> str:
        base = {"epochs": 3, "seed": 0, **extra}
        return fingerprint(Step(bundle, REPO / "bundles" / bundle, tmp_path, base, {"datalist": "x"}))

    assert fp("baseline", multidomain_datalist="/a.json") == fp("baseline")  # not a baseline key
    assert fp("hssl_pretrain", multidomain_datalist="/a.json") != fp("hssl_pretrain")
    assert fp("baseline", epochs="4") != fp("baseline")


def test_sweep_tables_merge_only_at_the_same_setting() -> None:
    base = {"dataset": "d", "labelled_fraction": 0.2, "seeds": [0, 1], "scale": "demo", "overrides": {"epochs": 60}}
    with_task_key = {**base, "overrides": {"epochs": 60, "multidomain_datalist": "/m.json"}}
    assert same_setting(base, with_task_key)
    assert not same_setting(base, {**base, "overrides": {"epochs": 30}})
    assert not same_setting(base, {**base, "seeds": [0]})
    assert not same_setting({}, base)


def test_published_paths_are_repository_relative_or_as_given(tmp_path: Path) -> None:
    assert portable_path(REPO / "runs" / "multidomain.json") == "runs/multidomain.json"
    assert portable_path("../shared/data/cxr_lungs") == "../shared/data/cxr_lungs"  # outside: as given
    assert portable_path(tmp_path) == str(tmp_path)
    assert portable({"a": str(REPO / "demo_data" / "siim"), "b": [3, "x"]}) == {"a": "demo_data/siim", "b": [3, "x"]}
    argv = ["--out", str(REPO / "runs" / "x"), "--set", f"multidomain_datalist={REPO / 'runs' / 'm.json'}"]
    assert portable_command("scripts/run_pipeline.py", argv) == (
        "python scripts/run_pipeline.py --out runs/x --set multidomain_datalist=runs/m.json"
    )
    assert portable_command("scripts/run_pipeline.py", ["--label", "8 labelled, 128 px"]) == (
        "python scripts/run_pipeline.py --label '8 labelled, 128 px'"  # runs as printed
    )
    assert parse_overrides(["epochs=3", "name=abc", 'w={"a": 1}']) == {"epochs": 3, "name": "abc", "w": {"a": 1}}
    with pytest.raises(SystemExit, match="key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(SystemExit, match="pos_sample_rate=null: a bundle run ignores null"):
        parse_overrides(["pos_sample_rate=null"])


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / line for line in out.stdout.splitlines() if (REPO / line).is_file()]


def test_scripts_are_thin_front_ends() -> None:
    scripts = sorted((REPO / "scripts").glob("*.py"))
    assert scripts
    for script in scripts:
        text = script.read_text()
        assert "sys.path" not in text, f"{script.name} edits sys.path: the repository is pip-installed"
        assert not re.search(r"^\s*(from|import) scripts\b", text, re.M), f"{script.name} imports another script"


def test_results_files_carry_no_machine_paths() -> None:
    files = _tracked("scripts/*.json", "scripts/*.md", "bundles/*.json", "bundles/*.md")
    assert any(f.name == "lambda_sweep.json" for f in files)
    machine_path = re.compile(r"(?<![\w.~-])/(work|home|tmp|root)(/|\b)")
    for f in files:
        found = machine_path.search(f.read_text())
        assert not found, f"{f.relative_to(REPO)} holds an absolute path: {found.group(0)}..."


def test_report_marks_blank_models_per_seed() -> None:
    """A model that finds no lesion (positive-only test Dice < 0.01) is marked in the table, with its seeds."""
    from pipeline.report import results_table, summarise

    def seed(positive: float | None) -> dict:
        return {"val": {"dice": 0.7}, "test": {"dice": 0.67, "dice_positive": positive, "iou": 0.6}, "history": []}

    summary = summarise(
        {"baseline": {0: seed(0.0), 1: seed(0.3)}, "student (distill)": {0: seed(0.8)}, "no positives": {0: seed(None)}}
    )
    assert summary["baseline"]["blank_seeds"] == [0] and summary["student (distill)"]["blank_seeds"] == []
    table = results_table(summary)
    assert "| baseline **blank** (1/2 runs) |" in table
    assert "| student (distill) |" in table and "| no positives |" in table  # no positive image: not blank
