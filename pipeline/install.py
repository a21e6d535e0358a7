"""Install one seed of a pipeline run into the bundles, as a model-zoo bundle ships its models.

After ``make demo`` (or ``run_pipeline.py --install SEED``) every bundle's ``models/`` holds the run's
trained ``model.pt`` and its ``metrics.json``, and ``distill/models/teachers.json`` points at the
installed teacher checkpoints (paths relative to the selection file, sha256 as selected). Then the
user's own commands work on the bundles: ``python -m monai.bundle run --config_file
bundles/distill/configs/train.json`` retrains the student from those teachers, ``inference.json``
and ``evaluate.json`` use the installed student.

A model already in a bundle's ``models/`` that differs from the one being installed (e.g. one the
user trained in place) is never overwritten: it moves to ``models/backup-<time>/`` (printed) only
after its replacement has been copied completely; an identical one is left as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from common.utils.io import atomic_path, atomic_write_json, file_sha256
from common.utils.metrics import RunMetrics
from pipeline.paths import BUNDLES, portable_path

SELECTION = "teachers.json"


class InstallError(RuntimeError):
    """A run cannot be installed: the message names the file and what is wrong."""


def trained_models(seed_dir: Path, bundles_dir: Path) -> dict[str, Path]:
    """``{bundle name: the run's models folder}`` for every complete training of the seed that has a bundle."""
    found = {}
    for metrics_file in sorted(seed_dir.glob("*/models/metrics.json")):
        models = metrics_file.parent
        name = models.parent.name
        if (bundles_dir / name / "configs").is_dir() and RunMetrics.read(metrics_file).complete:
            if not (models / "model.pt").is_file():
                raise InstallError(f"{models / 'model.pt'} does not exist although {metrics_file} says complete")
            found[name] = models
    return found


def _verified(models: Path) -> str:
    """sha256 of the run's model.pt, checked against what training recorded (when it recorded one)."""
    actual = file_sha256(models / "model.pt")
    recorded = RunMetrics.read(models / "metrics.json").model.get("sha256")
    if recorded and recorded != actual:
        raise InstallError(
            f"{models / 'model.pt'} changed or is corrupt since training (sha256 differs from metrics.json)"
        )
    return actual


def _backup(target: Path, names: list[str], stamp: str) -> Path | None:
    """Move the given files of ``target`` into ``target/backup-<stamp>/``; return the folder (None: nothing)."""
    present = [target / n for n in names if (target / n).is_file()]
    if not present:
        return None
    folder = target / f"backup-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    for path in present:
        os.replace(path, folder / path.name)
    return folder


def install_model(models: Path, target: Path, stamp: str) -> str:
    """Copy ``model.pt`` and ``metrics.json`` of ``models`` into ``target``; return what happened."""
    sha = _verified(models)
    existing = target / "model.pt"
    if existing.is_file() and file_sha256(existing) == sha:
        with atomic_path(target / "metrics.json") as tmp:  # the same model: refresh its numbers (test results)
            shutil.copyfile(models / "metrics.json", tmp)
        return "current"
    backup = None
    with atomic_path(existing) as tmp_model, atomic_path(target / "metrics.json") as tmp_metrics:
        shutil.copyfile(models / "model.pt", tmp_model)
        shutil.copyfile(models / "metrics.json", tmp_metrics)
        if file_sha256(tmp_model) != sha:
            raise InstallError(f"copying {models / 'model.pt'} to {target} gave a different file")
        backup = _backup(target, ["model.pt", "metrics.json", SELECTION], stamp)  # both copies are complete
    return f"installed (the previous model is kept in {backup})" if backup else "installed"


def install_selection(seed_dir: Path, bundles_dir: Path) -> Path:
    """``distill/models/teachers.json`` pointing at the installed teachers (relative paths, same sha256)."""
    source = seed_dir / SELECTION
    if not source.is_file():
        raise InstallError(f"{source} does not exist: the run has no teacher selection to install")
    selection = json.loads(source.read_text())
    target = bundles_dir / "distill" / "models" / SELECTION
    for entry in selection["teachers"]:
        installed = bundles_dir / entry["bundle"] / "models" / "model.pt"
        if not installed.is_file() or file_sha256(installed) != entry["sha256"]:
            raise InstallError(
                f"teacher {entry['task']}: {installed} is not the selected checkpoint {entry['checkpoint']}"
            )
        entry["checkpoint"] = os.path.relpath(installed, target.parent)
    selection["installed_from"] = portable_path(seed_dir)
    atomic_write_json(target, selection)
    return target


def install_run(seed_dir: str | Path, bundles_dir: str | Path = BUNDLES) -> list[str]:
    """Install every trained model of one seed folder (``runs/<name>/seed<N>``) and its teacher selection.

    Returns one line per bundle saying what happened; raises :class:`InstallError` naming the problem.
    """
    seed_dir, bundles_dir = Path(seed_dir), Path(bundles_dir)
    if not seed_dir.is_dir():
        raise InstallError(f"{seed_dir} does not exist (a pipeline run's seed folder, e.g. runs/demo/seed0)")
    models = trained_models(seed_dir, bundles_dir)
    if not models:
        raise InstallError(f"{seed_dir} has no completely trained bundle to install")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    lines = [f"{name}: {install_model(src, bundles_dir / name / 'models', stamp)}" for name, src in models.items()]
    if "distill" in models:
        lines.append(f"distill: teacher selection {install_selection(seed_dir, bundles_dir)}")
    return lines
