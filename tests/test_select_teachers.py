"""Teacher selection from synthetic metrics: the table, the file, ties, missing and failed variants.

The rules are ``common.distill.selection``; ``scripts/select_teachers.py`` is its command line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from common.distill.selection import select_teachers
from scripts.select_teachers import main as select_teachers_cli


def _variant(root: Path, name: str, dice: float | None, positive: float = 0.5, status: str = "complete") -> None:
    """A trained variant whose validation ``dice_hmean`` (the default criterion) and ``dice`` are ``dice``."""
    models = root / name / "models"
    models.mkdir(parents=True)
    (models / "model.pt").write_bytes(name.encode())
    validation = (
        None if dice is None else {"dice_hmean": dice, "dice": dice, "dice_positive": positive, "iou": dice / 2}
    )
    (models / "metrics.json").write_text(json.dumps({"training": {"status": status}, "validation": validation}))


def _read(root: Path) -> dict:
    return json.loads((root / "distill" / "models" / "teachers.json").read_text())


def test_picks_the_better_mode_per_task_and_handles_ties(tmp_path: Path, capsys) -> None:
    _variant(tmp_path, "rotation_joint", 0.70)
    _variant(tmp_path, "rotation_pretrain", 0.75)
    _variant(tmp_path, "jigsaw_joint", 0.60, positive=0.40)
    _variant(tmp_path, "jigsaw_pretrain", 0.60, positive=0.45)  # tie on dice, better positive dice
    _variant(tmp_path, "genesis_joint", 0.50, positive=0.3)
    _variant(tmp_path, "genesis_pretrain", 0.50, positive=0.3)  # full tie
    code = select_teachers_cli(["--bundles-dir", str(tmp_path), "--tasks", "rotation", "jigsaw", "genesis"])
    assert code == 0
    table = capsys.readouterr().out
    assert "validation dice_hmean" in table and "rotation         0.7000        0.7500  pretrain" in table
    teachers = {t["task"]: t for t in _read(tmp_path)["teachers"]}
    assert teachers["rotation"]["mode"] == "pretrain" and teachers["rotation"]["val_joint"] == 0.70
    assert teachers["jigsaw"]["mode"] == "pretrain" and "positive-only" in teachers["jigsaw"]["reason"]
    assert teachers["genesis"]["mode"] == "joint" and "joint preferred" in teachers["genesis"]["reason"]
    checkpoint = Path(teachers["rotation"]["checkpoint"])
    assert checkpoint == (tmp_path / "rotation_pretrain" / "models" / "model.pt").resolve()
    assert teachers["rotation"]["sha256"] == hashlib.sha256(b"rotation_pretrain").hexdigest()


def test_missing_or_failed_variant_is_an_error_naming_it(tmp_path: Path, capsys) -> None:
    _variant(tmp_path, "rotation_joint", 0.70)
    _variant(tmp_path, "jigsaw_joint", 0.6)
    _variant(tmp_path, "jigsaw_pretrain", 0.9, status="failed")
    code = select_teachers(tmp_path, ["rotation", "jigsaw"])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "distill").exists()
    assert "rotation_pretrain: missing" in err and "jigsaw_pretrain: failed: training status is 'failed'" in err


def test_allow_missing_takes_what_is_there(tmp_path: Path, capsys) -> None:
    _variant(tmp_path, "rotation_joint", 0.70)
    _variant(tmp_path, "jigsaw_joint", None)  # trained, but no validation dice
    code = select_teachers(tmp_path, ["rotation", "jigsaw"], allow_missing=True)
    assert code == 0
    selection = _read(tmp_path)
    assert [t["task"] for t in selection["teachers"]] == ["rotation"]
    assert selection["teachers"][0]["reason"] == "only usable variant"
    assert selection["tasks_without_teacher"] == ["jigsaw"]
    assert "warning: jigsaw_joint: failed: no validation dice_hmean" in capsys.readouterr().err


@pytest.mark.parametrize("allow", [[], ["--allow-missing"]])
def test_nothing_usable_is_an_error(tmp_path: Path, allow: list[str]) -> None:
    assert select_teachers_cli(["--bundles-dir", str(tmp_path), "--tasks", "rotation", *allow]) == 2
    assert select_teachers(tmp_path, ["rotation"], allow_missing=bool(allow)) == 2


def test_default_tasks_are_the_registered_ones(tmp_path: Path, capsys) -> None:
    from common.ssl import list_tasks

    for task in list_tasks():
        _variant(tmp_path, f"{task}_joint", 0.5)
    out = tmp_path / "sel.json"
    assert select_teachers(tmp_path, out=out, allow_missing=True) == 0
    assert [t["task"] for t in json.loads(out.read_text())["teachers"]] == list_tasks()


def test_a_blank_variant_is_refused_whatever_its_score(tmp_path: Path, capsys) -> None:
    """An empty predictor (positive-only Dice 0) scores well on competition Dice; it is never a teacher."""
    _variant(tmp_path, "rotation_joint", 0.667, positive=0.0)  # blank: wins on competition dice alone
    _variant(tmp_path, "rotation_pretrain", 0.55, positive=0.30)
    _variant(tmp_path, "jigsaw_joint", 0.667, positive=0.004)
    _variant(tmp_path, "jigsaw_pretrain", 0.667, positive=0.0)
    code = select_teachers_cli(["--bundles-dir", str(tmp_path), "--tasks", "rotation", "jigsaw", "--metric", "dice"])
    assert code == 0
    out = capsys.readouterr().out
    selection = _read(tmp_path)
    assert [(t["task"], t["mode"]) for t in selection["teachers"]] == [("rotation", "pretrain")]
    assert selection["teachers"][0]["reason"] == "the other variant is blank" and selection["metric"] == "dice"
    assert selection["tasks_without_teacher"] == ["jigsaw"]
    assert {r["bundle"] for r in selection["refused"]} == {"rotation_joint", "jigsaw_joint", "jigsaw_pretrain"}
    assert "refused rotation_joint: blank: validation positive-only Dice 0.0000 < 0.01" in out


def test_every_variant_blank_is_an_error(tmp_path: Path, capsys) -> None:
    _variant(tmp_path, "rotation_joint", 0.667, positive=0.0)
    _variant(tmp_path, "rotation_pretrain", 0.667, positive=0.0)
    assert select_teachers(tmp_path, ["rotation"]) == 2
    err = capsys.readouterr().err
    assert "refused rotation_pretrain: blank" in err and "no task has a usable teacher" in err


def test_the_metric_decides(tmp_path: Path) -> None:
    """dice_hmean (default) and competition dice can disagree: the chosen one decides."""
    for name, hmean, dice in (("rotation_joint", 0.40, 0.70), ("rotation_pretrain", 0.50, 0.60)):
        models = tmp_path / name / "models"
        models.mkdir(parents=True)
        (models / "model.pt").write_bytes(name.encode())
        validation = {"dice_hmean": hmean, "dice": dice, "dice_positive": 0.3}
        (models / "metrics.json").write_text(json.dumps({"training": {"status": "complete"}, "validation": validation}))
    assert select_teachers(tmp_path, ["rotation"]) == 0
    assert _read(tmp_path)["teachers"][0]["mode"] == "pretrain"
    assert select_teachers(tmp_path, ["rotation"], metric="dice") == 0
    assert _read(tmp_path)["teachers"][0]["mode"] == "joint"
