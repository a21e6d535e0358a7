"""The stage-2 teachers: read the selection, verify and load each checkpoint, combine them.

``scripts/select_teachers.py`` writes the selection (``teachers.json``: task, mode, checkpoint path
and its sha256 per teacher). Every problem stops the run at once with a message that names what is
missing and the command that produces it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from common.utils.checkpoints import CheckpointError, load_checkpoint
from common.utils.io import file_sha256

SELECT_COMMAND = "python scripts/select_teachers.py"
#: how the teachers' probabilities become one target: their mean (the method's ensemble, the default) or
#: their voxel-wise maximum (a lesion any one teacher finds stays in the target: an ablation for weak teachers
#: that disagree, whose mean falls under the threshold)
COMBINE_RULES = ("mean", "max")
TRAIN_HINT = (
    "train the stage-1 bundles and select the teachers first "
    f"(`python scripts/run_pipeline.py` does both, or train bundles/<task>_<mode> and run `{SELECT_COMMAND}`)"
)


class TeacherSelectionError(RuntimeError):
    """The teacher selection or one of its checkpoints is missing, unreadable or altered."""


def _pipeline_selections(selection_file: Path) -> list[Path]:
    """Teacher selections of pipeline runs next to the bundles (``<repo>/runs/<run>/seed<N>/teachers.json``
    for ``<repo>/bundles/distill/models/teachers.json``)."""
    parents = selection_file.resolve().parents
    return sorted((parents[3] / "runs").glob("*/seed*/teachers.json")) if len(parents) > 3 else []


def _missing_selection_hint(selection_file: Path) -> str:
    """What to do when a bundle has no selection: install a pipeline run that has one, else train."""
    runs = _pipeline_selections(selection_file)
    if not runs:
        return TRAIN_HINT
    seed_dir = runs[0].parent
    return (
        f"the pipeline run {seed_dir.parent.name} has one ({len(runs)} found, e.g. {seed_dir}/teachers.json): install "
        f"its models into the bundles with `python scripts/install_run.py {seed_dir}`, or pass "
        f"`--teachers_file {seed_dir}/teachers.json`"
    )


def best_teachers(entries: list[dict[str, Any]], top_k: int, source: Path) -> list[dict[str, Any]]:
    """The ``top_k`` entries with the highest validation score (``val``; ties: higher positive-only Dice,
    then selection order), in selection order; every entry when ``top_k`` is 0."""
    if top_k == 0:
        return entries
    if top_k < 0 or top_k > len(entries):
        raise TeacherSelectionError(
            f"teacher_top_k {top_k}: there are {len(entries)} teacher(s) to choose from in {source}; "
            f"use 0 (all of them) up to {len(entries)}"
        )
    unscored = [e["task"] for e in entries if not isinstance(e.get("val"), (int, float))]
    if unscored:
        raise TeacherSelectionError(
            f"{source}: teacher(s) {unscored} have no validation score ('val'), which teacher_top_k ranks by; "
            f"re-run `{SELECT_COMMAND}`"
        )
    ranked = sorted(
        range(len(entries)), key=lambda i: (-entries[i]["val"], -(entries[i].get("val_dice_positive") or 0))
    )
    keep = set(ranked[:top_k])
    return [e for i, e in enumerate(entries) if i in keep]


def read_selection(
    selection_file: str | Path, tasks: Sequence[str] | None = None, top_k: int = 0
) -> list[dict[str, Any]]:
    """The selected teachers (optionally only ``tasks``, then only the ``top_k`` best by validation score),
    with every checkpoint present and unaltered.

    A relative checkpoint path is relative to the selection file's folder (an installed selection).
    """
    path = Path(selection_file)
    if not path.is_file():
        raise TeacherSelectionError(f"no teacher selection: {path} does not exist; {_missing_selection_hint(path)}")
    try:
        entries = json.loads(path.read_text())["teachers"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TeacherSelectionError(f"{path} is not a teacher selection ({e}); re-run `{SELECT_COMMAND}`") from e
    if tasks:
        known = {e["task"] for e in entries}
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise TeacherSelectionError(
                f"{path} has no teacher for {unknown} (it lists {sorted(known)}); "
                f"train those bundles and re-run `{SELECT_COMMAND}`, or leave them out of teacher_tasks"
            )
        entries = [e for e in entries if e["task"] in tasks]
    if not entries:
        raise TeacherSelectionError(f"{path} lists no teacher; {TRAIN_HINT}")
    entries = best_teachers(entries, top_k, path)
    for entry in entries:
        checkpoint = path.parent / entry["checkpoint"]  # an absolute checkpoint path stays as it is
        entry["checkpoint"] = str(checkpoint)
        name = f"teacher {entry['task']} ({entry.get('bundle', entry.get('mode'))})"
        if not checkpoint.is_file():
            raise TeacherSelectionError(
                f"{name}: checkpoint {checkpoint} does not exist; retrain {entry.get('bundle', 'its bundle')} "
                f"and re-run `{SELECT_COMMAND}`"
            )
        actual = file_sha256(checkpoint)
        if actual != entry["sha256"]:
            raise TeacherSelectionError(
                f"{name}: checkpoint {checkpoint} has sha256 {actual[:16]}..., the selection recorded "
                f"{entry['sha256'][:16]}... (the model changed after selection); re-run `{SELECT_COMMAND}`"
            )
    return entries


def load_teacher(entry: dict[str, Any], network_def: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """One selected teacher as a frozen copy of ``network_def`` (eval mode) on ``device``."""
    net = copy.deepcopy(network_def)
    try:
        state = load_checkpoint(entry["checkpoint"])
    except CheckpointError as e:
        raise TeacherSelectionError(
            f"teacher {entry['task']}: {e}; retrain {entry.get('bundle', 'its bundle')} and re-run `{SELECT_COMMAND}`"
        ) from e
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise TeacherSelectionError(
            f"teacher {entry['task']}: {entry['checkpoint']} does not fit this bundle's network_def ({e})"
        ) from e
    return net.to(device).eval().requires_grad_(False)


class TeacherEnsemble(torch.nn.Module):
    """The frozen teachers as one network: their sigmoid probabilities at temperature T, combined.

    ``probabilities(x)`` is the soft target: the teachers' mean (``combine="mean"``, the method's ensemble)
    or their maximum (``"max"``). ``forward(x)`` returns its logit, so the ensemble is a drop-in ``network``
    for the baseline's evaluation and inference configs (sigmoid, threshold 0.5).
    """

    def __init__(self, teachers: Sequence[torch.nn.Module], temperature: float = 1.0, combine: str = "mean") -> None:
        super().__init__()
        if not teachers:
            raise ValueError("an ensemble needs at least one teacher")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if combine not in COMBINE_RULES:
            raise ValueError(f"combine must be one of {', '.join(COMBINE_RULES)}, got {combine!r}")
        self.teachers = torch.nn.ModuleList(teachers)
        self.temperature = float(temperature)
        self.combine = combine
        self.fingerprint: list[str] = []  # the checkpoints' sha256 values when loaded from a selection
        self.tasks: list[str] = []
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> TeacherEnsemble:
        """Teachers stay in eval mode (frozen batch-norm statistics) whatever the caller asks."""
        return super().train(False)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Mean (or maximum) of ``sigmoid(teacher(x) / T)`` over the teachers."""
        total = None
        for teacher in self.teachers:
            p = torch.sigmoid(teacher(x).float() / self.temperature)
            if total is None:
                total = p
            elif self.combine == "max":
                total = torch.maximum(total, p)
            else:
                total = total + p  # summed in teacher order, as before the rule was a choice (same bits)
        return total if self.combine == "max" else total / len(self.teachers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(self.probabilities(x), eps=1e-6)


def load_ensemble(
    selection_file: str | Path,
    network_def: torch.nn.Module,
    device: torch.device | str,
    temperature: float = 1.0,
    tasks: Sequence[str] = (),
    top_k: int = 0,
    combine: str = "mean",
) -> TeacherEnsemble:
    """``TeacherEnsemble`` of the verified teachers in ``selection_file`` (``tasks``: a subset, default all;
    ``top_k``: only the k best of them by validation score, 0 for all; ``combine``: one of ``COMBINE_RULES``).

    Its ``fingerprint`` (the checkpoints' sha256 values) identifies it, e.g. in cache keys.
    """
    entries = read_selection(selection_file, tasks, top_k)
    ensemble = TeacherEnsemble([load_teacher(e, network_def, device) for e in entries], temperature, combine)
    ensemble.fingerprint = [e["sha256"] for e in entries]
    ensemble.tasks = [e["task"] for e in entries]
    return ensemble


def exit_unless_selection(selection_file: str | Path, tasks: Sequence[str] = (), top_k: int = 0) -> int:
    """Stop the bundle at once, with only the message (no traceback), when the selection is unusable.

    Raises ``SystemExit``, which MONAI's config evaluation does not wrap; returns the teacher count.
    """
    try:
        return len(read_selection(selection_file, tasks, top_k))
    except TeacherSelectionError as e:
        raise SystemExit(f"error: {e}") from None
