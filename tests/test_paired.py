"""Paired differences from published summaries (``pipeline.paired``, ``scripts/paired.py``): the same run on
both sides, sources joined per side, unpaired runs listed, bad sources named; the difference of differences of
four sides."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from pipeline.paired import PairingError, Source, difference_of_differences, joined_runs, paired
from scripts.paired import main as paired_main
from tests.test_merge import ablation_part, part, runs


def test_a_pipeline_row_against_an_ablation_arm_pairs_by_seed_and_fold(tmp_path: Path, capsys) -> None:
    pipeline = part(tmp_path, "pipe", {**runs([0, 1, 2]), **runs([0, 1, 2], seed=1)})
    arms = ablation_part(tmp_path, "abl", [0, 1, 2, 3], seed=1)  # fold 3 only here: listed, not paired
    a = json.loads(pipeline.read_text())["per_seed"]
    b = {r["fold"]: r for r in json.loads(arms.read_text())["per_run"] if r["arm"] == "gradnorm"}
    diffs = [a[f"1/fold{f}"]["rotation_joint"]["val"]["dice_hmean"] - b[f]["val"]["dice_hmean"] for f in (0, 1, 2)]
    result = paired(
        joined_runs([Source(pipeline, "rotation_joint")]), joined_runs([Source(arms, "gradnorm")]),
        "val", "dice_hmean", ("a", "b"),
    )  # fmt: skip
    assert result["n"] == 3 and list(result["per_run"]) == [(1, 0), (1, 1), (1, 2)]  # seed 0 has no partner
    assert result["mean"] == pytest.approx(statistics.fmean(diffs))
    assert result["se"] == pytest.approx(statistics.stdev(diffs) / 3**0.5)
    assert result["ahead"] == sum(d > 0 for d in diffs)
    argv = ["--a", f"{pipeline}:rotation_joint", "--b", f"{arms}:gradnorm", "--metric", "val:dice_hmean"]
    assert paired_main(argv) == 0
    out = capsys.readouterr().out
    assert f"a - b {statistics.fmean(diffs):+.3f}" in out and f"ahead in {result['ahead']} of 3" in out
    assert "not paired, only in a (3): 0/fold0, 0/fold1, 0/fold2" in out
    assert "not paired, only in b (1): 1/fold3" in out


def test_two_sources_join_on_one_side_and_a_name_with_spaces_parses(tmp_path: Path) -> None:
    seed0, seed1 = part(tmp_path, "s0", runs([0, 1])), part(tmp_path, "s1", runs([0, 1], seed=1))
    both = part(tmp_path, "both", {**runs([0, 1]), **runs([0, 1], seed=1)})
    joined = joined_runs([Source.parse(f"{seed0}:student (distill)"), Source.parse(f"{seed1}:student (distill)")])
    assert sorted(joined) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    same = paired(joined, joined_runs([Source(both, "student (distill)")]), "test", "dice", ("a", "b"))
    assert same["mean"] == 0 and same["ahead"] == 0 and same["n"] == 4  # the same records: no difference


def test_the_difference_of_differences_subtracts_run_by_run_over_the_runs_all_four_share(
    tmp_path: Path, capsys
) -> None:
    px128 = part(tmp_path, "px128", runs([0, 1, 2]))
    px256 = part(tmp_path, "px256", runs([0, 1, 2, 3], seed=0))  # fold 3 only at 256: listed, not paired
    sides = [(px256, "student (distill)"), (px128, "student (distill)"), (px256, "baseline"), (px128, "baseline")]
    per_seed = [json.loads(path.read_text())["per_seed"] for path, _ in sides]
    hmean = [
        [p[f"0/fold{f}"][name]["val"]["dice_hmean"] for f in (0, 1, 2)]
        for p, (_, name) in zip(per_seed, sides, strict=True)
    ]
    student_gain = [a - b for a, b in zip(hmean[0], hmean[1], strict=True)]
    baseline_gain = [c - d for c, d in zip(hmean[2], hmean[3], strict=True)]
    extra = [s - b for s, b in zip(student_gain, baseline_gain, strict=True)]
    names = [f"{path}:{name}" for path, name in sides]
    result = difference_of_differences(
        [joined_runs([Source(path, name)]) for path, name in sides], "val", "dice_hmean", names
    )
    assert result["n"] == 3 and list(result["per_run"]) == [(0, 0), (0, 1), (0, 2)]
    assert result["per_run"][(0, 1)] == pytest.approx(extra[1])
    assert result["mean"] == pytest.approx(statistics.fmean(extra))
    assert result["se"] == pytest.approx(statistics.stdev(extra) / 3**0.5)
    assert result["a_mean"] == pytest.approx(statistics.fmean(student_gain))
    assert result["b_mean"] == pytest.approx(statistics.fmean(baseline_gain))
    argv = ["--a", names[0], "--b", names[1], "--c", names[2], "--d", names[3], "--metric", "val:dice_hmean"]
    assert paired_main(argv) == 0
    out = capsys.readouterr().out
    assert f"(a - b) - (c - d) {statistics.fmean(extra):+.3f}" in out
    assert "per run (seed/fold (a - b) - (c - d)): 0/0 " in out and f"c: {names[2]}" in out
    assert "not paired, only in a (1): 0/fold3" in out and "not paired, only in c (1): 0/fold3" in out
    assert "only in b" not in out and "only in d" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (lambda p: ["--a", f"{p}:nobody", "--b", f"{p}:baseline"], r"pipe\.json: no model 'nobody'; it has baseline, "),
        (lambda p: ["--a", f"{p}:baseline", f"{p}:baseline", "--b", f"{p}:mean_teacher"],
         r"pipe\.json:baseline: run seed 0 fold 0 is also given by .*pipe\.json:baseline"),
        (lambda p: ["--a", str(p), "--b", f"{p}:baseline"], r"give a source as FILE\.json:NAME"),
        (lambda p: ["--a", f"{p}:baseline", "--b", f"{p}:mean_teacher", "--metric", "dice"], r"--metric 'dice': give"),
        (lambda p: ["--a", f"{p}:baseline", "--b", f"{p}:mean_teacher", "--metric", "val:nope"],
         r"pipe\.json:baseline: run seed 0 fold 0 has no val 'nope'"),
        (lambda p: ["--a", f"{p}:baseline", "--b", f"{p.parent / 'other.json'}:baseline"],
         r"pipe\.json:baseline and .*other\.json:baseline share no run \(seed, fold\): nothing to pair"),
        (lambda p: ["--a", f"{p}:baseline", "--b", f"{p}:mean_teacher", "--c", f"{p}:baseline"],
         r"--c and --d go together"),
        (lambda p: ["--a", f"{p}:baseline", "--b", f"{p}:mean_teacher", "--c", f"{p}:baseline",
                    "--d", f"{p.parent / 'other.json'}:baseline"],
         r"pipe\.json:baseline, .*other\.json:baseline share no run \(seed, fold\): nothing to pair"),
    ],
)  # fmt: skip
def test_bad_sources_stop_with_one_line_naming_them(tmp_path: Path, argv, message: str) -> None:
    pipeline = part(tmp_path, "pipe", runs([0, 1]))
    part(tmp_path, "other", runs([3], seed=2))  # no run in common with pipe.json
    with pytest.raises(SystemExit) as stop:
        paired_main(argv(pipeline))
    assert str(stop.value).startswith("error: ")
    assert re.search(message, str(stop.value)), stop.value


def test_an_unreadable_summary_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(PairingError, match=r"broken\.json: not a readable JSON summary"):
        joined_runs([Source(broken, "baseline")])
