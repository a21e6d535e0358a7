"""One study published by several sittings: merging the parts' per-run records equals one run over all folds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipeline.ablation import summarise as ablation_summarise
from pipeline.ablation import table as ablation_table
from pipeline.merge import merge
from pipeline.paths import publish
from pipeline.report import in_report_order, summarise
from scripts.merge_results import main as merge_results

SETTINGS = {
    "dataset_dir": "../shared/data/siim_real/labelled", "labelled_count": 54, "folds": 5, "scale": "small",
    "overrides": {"image_size": 128}, "external": {}, "tasks": ["rotation"], "unlabelled_dirs": ["pool"],
}  # fmt: skip
BF16 = {"precision": ["bf16+channels_last"], "torch_threads": [1]}  # an arithmetic record (settings)
FP32 = {"precision": ["fp32+channels_last"], "torch_threads": [1]}
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


def test_a_pretraining_two_parts_share_is_counted_once(tmp_path: Path) -> None:
    """Fold 4 published after folds 0-3: both parts carry the seed's pool pre-training (run ``0``)."""

    def costs(folds: list[int]) -> list[dict]:
        pool = {"model": "rotation_pretrain", "stage": "pretrain", "run": "0", "cpu_s": 600.0, "wall_s": 300.0}
        trained = [
            {"model": "baseline", "stage": "train", "run": f"0/fold{f}", "cpu_s": 60.0 * (f + 1), "wall_s": 60.0}
            for f in folds
        ]
        return [pool, *trained]

    paths = []
    for name, folds in (("folds0123", [0, 1, 2, 3]), ("fold4", [4])):
        path = part(tmp_path, name, runs(folds))
        path.write_text(json.dumps({**json.loads(path.read_text()), "compute_runs": costs(folds)}))
        paths.append(path)
    merged = merge(paths, "m", "c")
    assert merged["compute"]["rotation_pretrain"]["pretrain"] == {"cpu_min": 10.0, "wall_min": 5.0, "runs": 1}
    assert merged["compute"]["baseline"]["train"] == {"cpu_min": 3.0, "wall_min": 1.0, "runs": 5}  # (1+..+5)/5
    assert [r["run"] for r in merged["compute_runs"] if r["model"] == "baseline"] == [f"0/fold{f}" for f in range(5)]
    older = part(tmp_path, "older", runs([4]))  # published before per-run costs: the weighted means, as before
    assert "compute_runs" not in merge([paths[0], older], "m", "c")


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
    sweep = part(tmp_path, "sweep", runs([3]))
    sweep.write_text(json.dumps({**json.loads(sweep.read_text()), "kind": "sweep"}))
    with pytest.raises(ValueError, match=r"kind 'sweep', only run_pipeline\.py \('pipeline'\) and ablate\.py"):
        merge([fresh, sweep], "m", "c")
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


def test_parts_on_two_processors_merge_and_list_both(tmp_path: Path, capsys) -> None:
    """Same precision and threads on two CPU generations: one study of disjoint runs, both processors named
    (a run repeats to the last digit only on the same one); a part recorded before the processor was, named."""
    cpu = {**BF16, "processor": ["Xeon (family 6, model 143)"], "isa": ["avx2 avx512f avx512_bf16 amx_bf16"]}
    other = {**BF16, "processor": ["Xeon (family 6, model 106)"], "isa": ["avx2 avx512f"]}
    a, b = part(tmp_path, "a", runs([0]), arithmetic=cpu), part(tmp_path, "b", runs([1]), arithmetic=other)
    older = part(tmp_path, "older", runs([2]), arithmetic=BF16)
    out = tmp_path / "m.json"
    assert merge_results([str(a), str(b), str(older), "--out", str(out), "--label", "m"]) == 0
    merged = json.loads(out.read_text())
    assert merged["settings"]["arithmetic"] == {
        **BF16,
        "processor": ["Xeon (family 6, model 106)", "Xeon (family 6, model 143)"],
        "isa": ["avx2 avx512f", "avx2 avx512f avx512_bf16 amx_bf16"],
    }
    assert merged["processor_unrecorded"] == ["older"] and "arithmetic_unrecorded" not in merged
    printed = capsys.readouterr().out
    assert "1 torch thread(s) on Xeon (family 6, model 106) / Xeon (family 6, model 143) (avx2 avx512f / " in printed
    assert "processor unrecorded: older" in printed
    fp32 = part(tmp_path, "fp32", runs([3]), arithmetic={**FP32, "processor": cpu["processor"]})
    with pytest.raises(ValueError, match=r"fp32\.json: trained in .*fp32.*, .*a\.json in .*bf16"):
        merge([a, fp32], "m", "c")  # the processor alike does not make another precision one study


def ablation_part(tmp_path: Path, name: str, folds: list[int], seed: int = 0, arms: dict | None = None, **settings):
    """A summary as ablate.py --only-folds ... --publish writes it (random metrics)."""
    rng = random.Random(seed * 10 + folds[0])
    arms = arms or {"fixed": {}, "gradnorm": {"aux_balancing": "gradnorm"}}
    per_run = [
        {"arm": arm, "seed": seed, "fold": fold, "best_epoch": 4, "train_cpu_s": 60.0 * (fold + 1), "blank": fold == 1,
         "test": {m: round(rng.random(), 4) for m in ("dice", "dice_positive", "iou")},
         "val": {m: round(rng.random(), 4) for m in ("dice", "dice_hmean")}}
        for fold in folds for arm in arms
    ]  # fmt: skip
    path = tmp_path / f"{name}.json"
    publish(path, {
        "kind": "ablation", "command": f"python scripts/ablate.py --only-folds {folds}",
        "settings": {"dataset": "../shared/data/siim_real/labelled", "bundle": "rotation_joint", "folds": 5,
                     "only_folds": folds, "seeds": [seed], "scale": "small", "arms": arms, "wall_time_s": 100,
                     **settings},
        "summary": ablation_summarise(per_run, list(arms)), "per_run": per_run,
        "test_sets": {f"seed{seed}": {f"fold{f}": [f"img{f}"] for f in folds}}, "table": "",
    })  # fmt: skip
    return path


def test_ablation_sittings_merge_into_the_summary_of_all_their_runs(tmp_path: Path, capsys) -> None:
    parts = [ablation_part(tmp_path, "f34", [3, 4]), ablation_part(tmp_path, "f012", [0, 1, 2])]
    parts.append(ablation_part(tmp_path, "seed1", [0, 1, 2, 3, 4], seed=1))
    out = tmp_path / "merged.json"
    assert merge_results([*map(str, parts), "--out", str(out), "--label", "all"]) == 0
    merged = json.loads(out.read_text())
    every = [r for p in parts for r in json.loads(p.read_text())["per_run"]]
    assert merged["kind"] == "ablation" and merged["label"] == "all" and len(merged["per_run"]) == 20
    assert [(r["seed"], r["fold"], r["arm"]) for r in merged["per_run"]] == sorted(
        (r["seed"], r["fold"], r["arm"]) for r in every
    )  # seed, fold, then the arms' order (fixed before gradnorm)
    assert merged["summary"] == ablation_summarise(every, ["fixed", "gradnorm"])
    fixed = merged["summary"]["fixed"]
    assert fixed["n"] == 10 and fixed["blank"] == ["seed0/fold1", "seed1/fold1"]
    assert fixed["train_cpu_min"] == {"mean": 3.0, "std": 1.4907, "n": 10}  # folds 0-4 cost 1-5 minutes, each seed
    settings = merged["settings"]
    assert settings["only_folds"] is None and settings["seeds"] == [0, 1] and settings["wall_time_s"] == 300
    assert list(merged["test_sets"]) == ["seed0", "seed1"]
    assert list(merged["test_sets"]["seed0"]) == ["fold0", "fold1", "fold2", "fold3", "fold4"]
    assert merged["table"] == ablation_table(merged["summary"]) and merged["table"] in capsys.readouterr().out
    assert [p["runs"] for p in merged["parts"]] == [4, 6, 10]
    some = merge([parts[0], ablation_part(tmp_path, "f2", [2])], "m", "c")  # folds 2-4 of 5: say which
    assert some["settings"]["only_folds"] == [2, 3, 4] and some["summary"]["fixed"]["n"] == 3
    assert settings["arithmetic"] is None and merged["arithmetic_unrecorded"] == ["f34.json", "f012.json", "seed1.json"]


def test_ablation_parts_in_one_arithmetic_keep_it(tmp_path: Path) -> None:
    parts = [
        ablation_part(tmp_path, "f01", [0, 1], arithmetic=BF16),
        ablation_part(tmp_path, "f2", [2], arithmetic=BF16),
    ]
    merged = merge(parts, "m", "c")
    assert merged["settings"]["arithmetic"] == BF16 and "arithmetic_unrecorded" not in merged
    older = merge([*parts, ablation_part(tmp_path, "older", [3])], "m", "c")  # recorded before it was: named
    assert older["settings"]["arithmetic"] == BF16 and older["arithmetic_unrecorded"] == ["older.json"]


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (lambda p: ablation_part(p, "again", [1, 2]), r"again\.json: run seed 0 fold 1 arm 'fixed' is also in .*first"),
        (lambda p: ablation_part(p, "other", [2], bundle="jigsaw_joint"), r"other\.json: setting 'bundle' is \"jigsaw"),
        (
            lambda p: ablation_part(p, "arm", [2], arms={"fixed": {"aux_weight": 1}}),
            r"arm\.json: arm 'fixed' is \{'aux_weight': 1\}, in .*first\.json it is \{\}: rename one",
        ),
        (lambda p: part(p, "pipeline", runs([2])), r"pipeline\.json: parts of kinds \['ablation', 'pipeline'\]"),
        (
            lambda p: ablation_part(p, "bf16", [2], arithmetic=BF16),
            r"bf16\.json: trained in .*bf16.*, .*first\.json in .*fp32.*: other arithmetic gives other numbers",
        ),
    ],
)
def test_ablation_parts_of_other_studies_or_a_run_twice_stop_with_a_message(tmp_path: Path, second, message) -> None:
    first = ablation_part(tmp_path, "first", [0, 1], arithmetic=FP32)
    with pytest.raises(ValueError, match=message):
        merge([first, second(tmp_path)], "m", "c")
