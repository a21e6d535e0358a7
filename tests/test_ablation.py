"""The k-fold ablation on tiny data: two arms on two folds, the summary, a rerun that trains nothing, bad arms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.ablation import summarise, table
from pipeline.arms import parse_arms
from scripts.ablate import main as ablate
from scripts.merge_results import main as merge_results

TINY = ["--set", "epochs=1", "val_interval=1", "num_workers=0"]


@pytest.mark.slow
def test_two_arms_on_two_folds_then_a_rerun_trains_nothing(
    tiny_siim: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "ablation"
    run = [
        "--dataset-dir", str(tiny_siim), "--out", str(out), "--folds", "2", "--seeds", "0", "--jobs", "2",
        "--arm", "a", "--arm", "b", "learning_rate=0.001", *TINY,
    ]  # fmt: skip
    args = [*run, "--publish", str(tmp_path / "p.json")]
    assert ablate(args) == 0
    first = capsys.readouterr().out
    assert first.count(": trained,") == 4 and first.count(", evaluated") == 4
    results = json.loads((out / "ablation.json").read_text())
    settings = results["settings"]
    assert settings["bundle"] == "baseline" and settings["folds"] == 2 and settings["seeds"] == [0]
    assert settings["arms"] == {"a": {}, "b": {"learning_rate": 0.001}} and settings["overrides"]["epochs"] == 1
    assert settings["dataset"] == str(tiny_siim)  # outside the repository: as given
    for arm in ("a", "b"):
        summary = results["summary"][arm]
        assert summary["n"] == 2 and summary["test_dice"]["n"] == 2 and summary["val_dice"]["n"] == 2
        assert summary["blank_runs"] == len(summary["blank"])
    assert sorted((r["arm"], r["fold"]) for r in results["per_run"]) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert all("dice" in r["test"] and "n_images" not in r["test"] for r in results["per_run"])
    # what each run's training cost, from the run folder's logs/compute.jsonl (never a dead field)
    assert all(r["train_cpu_s"] > 0 and r["train_wall_s"] > 0 for r in results["per_run"])
    assert results["summary"]["a"]["train_cpu_min"]["n"] == 2
    assert "training CPU minutes a run: a " in first
    recorded = {json.dumps(r["arithmetic"], sort_keys=True) for r in results["per_run"]}  # what each model trained in
    assert len(recorded) == 1 and results["per_run"][0]["arithmetic"]["precision"]
    assert settings["arithmetic"] == {k: [v] for k, v in results["per_run"][0]["arithmetic"].items()}
    tests = results["test_sets"]["seed0"]
    assert not set(tests["fold0"]) & set(tests["fold1"]) and len(tests["fold0"]) + len(tests["fold1"]) == 24
    for fold in (0, 1):
        datalist = json.loads((out / "seed0" / f"fold{fold}" / "datalist.json").read_text())
        assert (datalist["folds"], datalist["fold"]) == (2, fold)
        assert [it["id"] for it in datalist["test"]] == tests[f"fold{fold}"]
        for arm, rate in (("a", 0.002), ("b", 0.001)):  # the demo scale's rate, the arm's own
            metrics = json.loads((out / "seed0" / f"fold{fold}" / arm / "models" / "metrics.json").read_text())
            assert metrics["config"]["learning_rate"] == rate
    published = json.loads((tmp_path / "p.json").read_text())
    assert published["kind"] == "ablation" and published["summary"] == results["summary"]
    assert "| a |" in published["table"] and "| b |" in published["table"] and "blank runs" in published["table"]

    assert ablate(args) == 0  # everything current: nothing trained or evaluated again
    second = capsys.readouterr().out
    assert second.count(": current, current") == 4 and ": trained" not in second and "evaluated" not in second
    with pytest.raises(SystemExit, match=r"datalist.json was built with .* use another --out"):
        ablate([*args, "--labelled-count", "5"])  # the folds on disk are of another labelled subset

    # the same ablation in two sittings, one fold each (--only-folds), merged: the summary of the whole run
    parts = []
    for fold in (1, 0):
        part = tmp_path / f"fold{fold}.json"
        assert ablate([*run, "--publish", str(part), "--only-folds", str(fold)]) == 0
        assert capsys.readouterr().out.count(": current, current") == 2  # nothing trained again
        one = json.loads(part.read_text())
        assert one["settings"]["only_folds"] == [fold] and {r["fold"] for r in one["per_run"]} == {fold}
        assert list(one["test_sets"]["seed0"]) == [f"fold{fold}"] and "--only-folds" in one["command"]
        parts.append(part)
    merged = tmp_path / "merged.json"
    assert merge_results([*map(str, parts), "--out", str(merged), "--label", "two sittings"]) == 0
    merged_results = json.loads(merged.read_text())
    assert merged_results["summary"] == results["summary"] and merged_results["per_run"] == results["per_run"]
    assert merged_results["test_sets"] == results["test_sets"] and merged_results["settings"]["only_folds"] is None


def test_repeated_arm_names_and_unknown_keys_stop_before_anything_runs(tiny_siim: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    common = ["--dataset-dir", str(tiny_siim), "--out", str(out)]
    with pytest.raises(SystemExit, match=r"--arm a is given twice"):
        ablate([*common, "--arm", "a", "--arm", "a", "epochs=2"])
    with pytest.raises(SystemExit, match=r"--arm b: lerning_rate: no bundle .*did you mean learning_rate"):
        ablate([*common, "--arm", "a", "--arm", "b", "lerning_rate=0.01"])
    with pytest.raises(SystemExit, match=r"--arm b: expected key=value, got 'fast'"):
        ablate([*common, "--arm", "b", "fast"])
    with pytest.raises(SystemExit, match=r"--arm expects NAME"):
        ablate([*common, "--arm", "epochs=2"])
    with pytest.raises(SystemExit, match=r"--folds must be at least 2"):
        ablate([*common, "--folds", "1"])
    with pytest.raises(SystemExit, match=r"--only-folds 3: not a fold of --folds 3 \(0 to 2\)"):
        ablate([*common, "--folds", "3", "--only-folds", "0", "3"])
    with pytest.raises(SystemExit, match=r"--bundle nope: no such bundle"):
        ablate([*common, "--bundle", "nope"])
    assert not out.exists()


def test_labelled_count_beyond_the_training_set_is_an_error(tiny_siim: Path, tmp_path: Path) -> None:
    data = ["--dataset-dir", str(tiny_siim)]
    with pytest.raises(SystemExit, match=r"labelled_count must be between 1 and \d+"):
        ablate([*data, "--out", str(tmp_path / "x"), "--folds", "2", "--labelled-count", "999"])


def test_no_arm_is_the_bundle_with_its_own_settings() -> None:
    assert parse_arms(None, "baseline") == {"baseline": {}}
    assert parse_arms([["x", "epochs=3", "loss_name=combo"]], "baseline") == {"x": {"epochs": 3, "loss_name": "combo"}}


def test_summary_counts_blank_runs_and_the_table_shows_them() -> None:
    def run(fold: int, positive: float) -> dict:
        test = {"dice": 0.5, "dice_positive": positive, "iou": 0.4}
        return {"arm": "a", "seed": 0, "fold": fold, "test": test, "val": {"dice": 0.6}, "blank": positive < 0.01}

    summary = summarise([run(0, 0.0), run(1, 0.3)], ["a"])
    assert summary["a"]["blank_runs"] == 1 and summary["a"]["blank"] == ["seed0/fold0"] and summary["a"]["n"] == 2
    assert summary["a"]["test_dice_positive"] == {"mean": 0.15, "std": 0.2121, "n": 2}
    lines = table(summary).splitlines()
    assert lines[0] == "| arm | test dice | test dice (positive) | test IoU | blank runs | val dice |"
    assert lines[2] == "| a | 0.500 ± 0.000 | 0.150 ± 0.212 | 0.400 ± 0.000 | 1/2 | 0.600 ± 0.000 |"
