"""One study published by several sittings: merging the parts' per-run records equals one run over all folds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipeline.merge import merge
from pipeline.paths import publish
from pipeline.report import in_report_order, summarise
from scripts.merge_results import main as merge_results

SETTINGS = {
    "dataset_dir": "../shared/data/siim_real/labelled", "labelled_count": 54, "folds": 5, "scale": "small",
    "overrides": {"image_size": 128}, "external": {}, "tasks": ["rotation"], "unlabelled_dirs": ["pool"],
}  # fmt: skip
ROWS = ("baseline", "rotation_joint", "teacher rotation", "mean_teacher", "student (distill)")


def record(rng: random.Random, row: str) -> dict:
    metrics = {k: round(rng.random(), 4) for k in ("dice", "dice_positive", "iou", "dice_hmean")}
    out = {
        "val": metrics, "test": {k: round(rng.random(), 4) for k in metrics},
        "test_tuned": {"dice": round(rng.random(), 4), "dice_positive": 0.0, "setting": {"threshold": 0.5}},
        "external": {}, "dir": f"/somewhere/{row}",
    }  # fmt: skip
    return {**out, "mode": "joint"} if row.startswith("teacher") else out


def runs(folds: list[int], seed: int = 0) -> dict[str, dict]:
    rng = random.Random(seed * 10 + folds[0])
    return {f"{seed}/fold{f}": {row: record(rng, row) for row in ROWS} for f in folds}


def part(tmp_path: Path, name: str, per_seed: dict, arms: dict | None = None, **settings) -> Path:
    """A summary as run_pipeline.py --publish writes it."""
    path = tmp_path / f"{name}.json"
    folds = sorted(int(k.split("fold")[1]) for k in per_seed)
    publish(path, {
        "kind": "pipeline", "label": name, "command": f"python scripts/run_pipeline.py --only-folds {folds}",
        "settings": {**SETTINGS, "only_folds": folds, "student_arms": arms, "wall_time_s": 60.0, **settings},
        "summary": {}, "per_seed": per_seed,
        "selection": {k: {"rotation": "joint"} for k in per_seed}, "refused": {k: [] for k in per_seed},
        "test_ids": {k: [f"img{k}"] for k in per_seed},
        "compute": {"baseline": {"train": {"cpu_min": float(len(per_seed)), "wall_min": 5.0, "runs": len(per_seed)}}},
    })  # fmt: skip
    return path


def test_merging_two_sittings_equals_one_run_over_all_folds(tmp_path: Path) -> None:
    first, second = runs([0, 1]), runs([2, 3, 4])
    a, b = part(tmp_path, "folds01", first), part(tmp_path, "folds234", second)
    assert "dir" not in json.loads(a.read_text())["per_seed"]["0/fold0"]["baseline"]  # no run folder published
    merged = merge([b, a], "all folds", "python scripts/merge_results.py ...")
    everything = {**first, **second}
    rows: dict = {}
    for key, models in everything.items():
        for row, rec in models.items():
            rows.setdefault(row, {})[key] = {k: v for k, v in rec.items() if k != "dir"}
    assert merged["summary"] == summarise(in_report_order(rows))
    assert merged["summary"]["baseline"]["val_dice"]["n"] == 5
    assert merged["summary"]["teacher rotation"]["chosen_modes"] == ["joint"] * 5
    assert list(merged["per_seed"]) == [f"0/fold{f}" for f in range(5)]  # by seed, then fold
    assert merged["settings"]["only_folds"] is None  # every fold of the 5 is in
    assert merged["settings"]["wall_time_s"] == 120.0
    assert list(merged["test_ids"]) == list(merged["per_seed"]) and merged["test_ids"]["0/fold3"] == ["img0/fold3"]
    # compute: the mean per run over both parts, weighted by their runs
    assert merged["compute"]["baseline"]["train"] == {"cpu_min": 2.6, "wall_min": 5.0, "runs": 5}
    assert [p["runs"] for p in merged["parts"]] == [list(second), list(first)]


def test_cli_publishes_the_merge_and_accumulates_later_sittings(tmp_path: Path, capsys) -> None:
    a, b = part(tmp_path, "fold0", runs([0])), part(tmp_path, "fold1", runs([1]))
    out = tmp_path / "study.json"
    assert merge_results([str(a), str(b), "--out", str(out), "--label", "two folds"]) == 0
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "2 runs (0/fold0, 0/fold1)" in printed
    merged = json.loads(out.read_text())
    assert merged["settings"]["only_folds"] == [0, 1] and merged["label"] == "two folds"
    c = part(tmp_path, "fold2", runs([2]))
    assert merge_results([str(out), str(c), "--out", str(out), "--label", "three folds"]) == 0  # in place
    assert list(json.loads(out.read_text())["per_seed"]) == ["0/fold0", "0/fold1", "0/fold2"]


def test_student_arms_are_united_and_a_fold_only_one_part_has_counts_once(tmp_path: Path) -> None:
    grid = runs([0])
    grid["0/fold0"]["student (distill, t2)"] = record(random.Random(1), "student")
    a = part(tmp_path, "grid", grid, arms={"t2": {"temperature": 2}})
    b = part(tmp_path, "plain", runs([1]))
    merged = merge([a, b], "m", "c")
    assert merged["settings"]["student_arms"] == {"t2": {"temperature": 2}}
    assert merged["summary"]["student (distill, t2)"]["val_dice"]["n"] == 1
    assert list(merged["summary"])[-1] == "student (distill, t2)"  # report order: the variants last


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (lambda p: part(p, "again", runs([1, 2])), r"again\.json: run 0/fold1 is also in .*first\.json"),
        (lambda p: part(p, "other", runs([2]), scale="full"), r"other\.json: setting 'scale' is \"full\", in .*"),
        (
            lambda p: part(
                p, "bf16", runs([2]), arithmetic={"precision": ["bf16+channels_last"], "torch_threads": [1]}
            ),
            r"bf16\.json: trained in .*bf16.*, .*first\.json in .*fp32.*: other arithmetic gives other numbers",
        ),
        (
            lambda p: part(p, "arm", runs([2]), arms={"x": {"alpha": 1}}),
            r"arm\.json: student arm 'x' is \{'alpha': 1\}, in .*first\.json it is \{'alpha': 2\}: rename one",
        ),
    ],
)
def test_parts_of_different_studies_or_the_same_run_twice_stop_with_a_message(
    tmp_path: Path, second, message: str
) -> None:
    fp32 = {"precision": ["fp32+channels_last"], "torch_threads": [1]}
    first = part(tmp_path, "first", runs([0, 1]), arms={"x": {"alpha": 2}}, arithmetic=fp32)
    with pytest.raises(ValueError, match=message):
        merge([first, second(tmp_path)], "m", "c")


def test_a_summary_without_per_run_records_says_how_to_republish(tmp_path: Path, capsys) -> None:
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"kind": "pipeline", "settings": SETTINGS, "summary": {}}))
    fresh = part(tmp_path, "fresh", runs([2]))
    with pytest.raises(SystemExit) as stop:
        merge_results([str(legacy), str(fresh), "--out", str(tmp_path / "m.json"), "--label", "m"])
    assert str(stop.value).startswith(f"error: {legacy}: no per-run records")
    assert "run_pipeline.py --publish" in str(stop.value)
    ablation = part(tmp_path, "abl", runs([3]))
    ablation.write_text(json.dumps({**json.loads(ablation.read_text()), "kind": "ablation"}))
    with pytest.raises(ValueError, match=r"kind 'ablation', only run_pipeline\.py summaries"):
        merge([fresh, ablation], "m", "c")
    assert not (tmp_path / "m.json").exists()


def test_a_part_without_recorded_arithmetic_merges_and_is_named(tmp_path: Path) -> None:
    fp32 = {"precision": ["fp32+channels_last"], "torch_threads": [1]}
    recorded = part(tmp_path, "recorded", runs([0]), arithmetic=fp32)
    older = part(tmp_path, "older", runs([1]))
    merged = merge([older, recorded], "m", "c")
    assert merged["settings"]["arithmetic"] == fp32 and merged["arithmetic_unrecorded"] == ["older"]
    assert "arithmetic_unrecorded" not in merge(
        [recorded, part(tmp_path, "same", runs([2]), arithmetic=fp32)], "m", "c"
    )
