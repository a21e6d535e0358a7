"""The few-label study's figures: the learning curve from published summaries (families, the best teacher
chosen on validation, ± std, one summary per size) and the per-image comparison of student and baseline
(MONAI MetricsSaver's dice_raw.csv paired image by image; the overlay picks where they differ most)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.learning_curve import axis_top, best_teacher, curve_points, load, plot, table
from pipeline.per_image import most_different, paired, per_image_dice, plot_scatter


def _stat(mean: float, std: float = 0.0, n: int = 5) -> dict:
    return {"mean": mean, "std": std, "n": n}


def _summary(n: int, student: float) -> dict:
    rows = {
        "baseline": {"test_dice_positive": _stat(0.10, 0.02), "test_dice": _stat(0.5)},
        # the better test score belongs to the teacher that is worse on validation: it must not be picked
        "teacher rotation": {"test_dice_positive": _stat(0.30), "val_dice_hmean": _stat(0.1)},
        "teacher genesis": {"test_dice_positive": _stat(0.20), "val_dice_hmean": _stat(0.4)},
        "teacher ensemble": {"test_dice_positive": _stat(0.22)},
        "student (distill)": {"test_dice_positive": _stat(student, 0.05), "test_dice": _stat(0.6)},
    }
    return {"label": f"n{n}", "settings": {"labelled_count": n}, "summary": rows}


def test_learning_curve_families_and_validation_choice(tmp_path: Path) -> None:
    results = [_summary(16, 0.3), _summary(8, 0.2)]
    assert best_teacher(results[0]["summary"]) == "teacher genesis"
    points = curve_points(results, "test_dice_positive")
    assert points["student (distill)"] == [(8, 0.2, 0.05, 5), (16, 0.3, 0.05, 5)]  # sorted by size
    assert points["best teacher (validation)"] == [(8, 0.2, 0.0, 5), (16, 0.2, 0.0, 5)]
    assert "mean_teacher" not in points  # absent rows are left out, not drawn as zero
    text = table(results)
    assert "| student (distill) | 0.200 ± 0.050 (5) | 0.300 ± 0.050 (5) |" in text
    plot(results, tmp_path / "lc.png")
    assert (tmp_path / "lc.png").stat().st_size > 1000


def test_the_dice_axis_fits_the_bands() -> None:
    assert axis_top([0.03, 0.12]) == pytest.approx(0.15)  # 0.132 rounded up to the next 0.05
    assert axis_top([0.5, 0.95]) == 1.0  # never above 1
    assert axis_top([0.0]) == pytest.approx(0.05)  # an all-blank panel still has an axis
    assert axis_top([]) == 1.0


def test_one_summary_per_size_with_a_count(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_summary(8, 0.1)))
    b.write_text(json.dumps(_summary(8, 0.2)))
    with pytest.raises(ValueError, match="both hold 8 labelled images"):
        load([a, b])
    b.write_text(json.dumps({"label": "old", "settings": {}, "summary": {}}))
    with pytest.raises(ValueError, match=r"old: no settings\.labelled_count"):
        load([b])


def _ablation(n: int, baseline: float) -> dict:
    rows = {"baseline": {"test_dice_positive": _stat(baseline, 0.01)}, "other": {"test_dice_positive": _stat(0.9)}}
    return {"kind": "ablation", "settings": {"labelled_count": n}, "summary": rows}


def test_a_baseline_ablation_is_a_line_of_its_own_beside_the_pipeline(tmp_path: Path) -> None:
    paths = []
    for name, result in {"n8": _summary(8, 0.2), "b8": _ablation(8, 0.05), "b32": _ablation(32, 0.15)}.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(result))
    points = curve_points(load(paths), "test_dice_positive")
    assert points["baseline alone (ablate.py)"] == [(8, 0.05, 0.01, 5), (32, 0.15, 0.01, 5)]  # its other arm: not drawn
    assert points["baseline"] == [(8, 0.10, 0.02, 5)]
    paths[-1].write_text(json.dumps(_ablation(8, 0.1)))
    with pytest.raises(ValueError, match="both hold 8 labelled images"):
        load(paths)
    paths[-1].write_text(json.dumps({**_ablation(32, 0.1), "summary": {"other": {}}}))
    with pytest.raises(ValueError, match="without an arm named 'baseline'"):
        load(paths)


def _raw(folder: Path, scores: dict[str, float]) -> None:
    out = folder / "eval" / "test"
    out.mkdir(parents=True)
    lines = ["filename,class0,mean", *(f"{k},{v},{v}" for k, v in scores.items())]
    out.joinpath("dice_raw.csv").write_text("\n".join(lines) + "\n")


def test_per_image_pairs_and_the_most_different(tmp_path: Path) -> None:
    _raw(tmp_path / "baseline", {"a.dcm": 0.1, "b.dcm": 0.9, "c.dcm": 1.0, "d.dcm": float("nan")})
    _raw(tmp_path / "distill", {"a.dcm": 0.6, "b.dcm": 0.8, "c.dcm": 0.5, "d.dcm": 0.3})
    assert per_image_dice(tmp_path / "baseline") == {"a.dcm": 0.1, "b.dcm": 0.9, "c.dcm": 1.0}  # NaN: unscored
    run = {"key": "0/fold0", "models": {"baseline": tmp_path / "baseline", "distill": tmp_path / "distill"},
           "positive": {"a.dcm": True, "b.dcm": True}}  # fmt: skip
    pairs = paired([run], "baseline", "distill")
    assert [p[1] for p in pairs] == ["a.dcm", "b.dcm", "c.dcm"] and pairs[2][4] is False
    assert most_different(pairs, 2) == ["a.dcm", "c.dcm"]  # |0.5| twice: the positive first
    assert paired([run], "baseline", "mean_teacher") == []
    assert plot_scatter(pairs, "baseline", "student", tmp_path / "s.png") and (tmp_path / "s.png").is_file()
    assert not plot_scatter([], "baseline", "student", tmp_path / "none.png")
