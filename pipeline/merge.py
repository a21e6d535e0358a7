"""One study published by several sittings: merge pipeline summaries of disjoint folds or seeds into one.

A study too long for one sitting runs ``run_pipeline.py --only-folds`` fold by fold, and each sitting publishes
what it finished (``scripts/results/<part>.json``); the run folders of earlier sittings may be gone. Their
published per-run records (``per_seed``: validation, test, tuned-test and external metrics of every model, per
run key ``<seed>/fold<k>``) are all the merge needs: the summary (mean ± std over every run), the teacher
selection, the refused teachers, the test ids and the compute table are rebuilt over the union, exactly as
one run over all those folds would have reported them. Parts must share every setting except which folds
ran (``only_folds``), the wall time and the student arms (the union is kept; an arm of the same name must mean
the same overrides), and no run may be in two parts. They must also have trained in the same arithmetic
(precision and torch threads: ``amp auto`` is bf16 on one CPU and fp32 on another); a part whose models did
not record it merges, and the merged summary lists it under ``arithmetic_unrecorded``. The processors the parts
trained on are joined (a run repeats to the last digit only on the same one; ``processor_unrecorded`` names
the parts trained before it was recorded).

Ablations (``scripts/ablate.py --only-folds``, kind ``ablation``) merge alike from their ``per_run`` records:
every setting but the folds and seeds that ran, the wall time and the arms equal, and the arithmetic as above;
no (seed, fold, arm) run in two parts; the summary and table rebuilt over the union (:func:`merge_ablations`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline import ablation, compute
from pipeline.report import in_report_order, summarise

#: settings that may differ between the parts of one study
PER_SITTING = ("only_folds", "wall_time_s", "student_arms", "arithmetic")
#: settings that may differ between the parts of one ablation
ABLATION_PER_SITTING = ("only_folds", "seeds", "wall_time_s", "arms", "arithmetic")
#: keyed by run: the parts' entries are joined
PER_RUN = ("selection", "refused", "test_ids")


class MergeError(ValueError):
    """Parts that are not one study, or not mergeable."""


def read_part(path: Path) -> dict[str, Any]:
    """A published pipeline or ablation summary with its per-run records."""
    try:
        part = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MergeError(f"{path}: not a readable JSON summary ({e})") from None
    if part.get("kind") == "ablation":
        if not part.get("per_run"):
            raise MergeError(f"{path}: an ablation summary without per-run records (per_run): nothing to merge")
        return part
    if part.get("kind") != "pipeline":
        raise MergeError(
            f"{path}: kind {part.get('kind')!r}, only run_pipeline.py ('pipeline') and ablate.py ('ablation') "
            "summaries merge"
        )
    if not part.get("per_seed"):
        raise MergeError(
            f"{path}: no per-run records (published before they were kept); "
            "publish it again from its run folder with run_pipeline.py --publish"
        )
    return part


def merged_arms(
    parts: Sequence[tuple[Path, dict[str, Any]]], key: str = "student_arms", what: str = "student arm"
) -> dict[str, Any] | None:
    """The union of the parts' arms (``settings[key]``); an arm named alike in two parts must have the same
    overrides."""
    arms: dict[str, Any] = {}
    where: dict[str, Path] = {}
    for path, part in parts:
        for name, overrides in (part["settings"].get(key) or {}).items():
            if name in arms and arms[name] != overrides:
                raise MergeError(
                    f"{path}: {what} {name!r} is {overrides}, in {where[name]} it is {arms[name]}: rename one"
                )
            arms.setdefault(name, overrides)
            where.setdefault(name, path)
    return arms or None


#: what the parts of one study must share (the processor may differ: see ``merged_arithmetic``)
SAME_ARITHMETIC = ("precision", "torch_threads")


def merged_arithmetic(parts: Sequence[tuple[Path, dict[str, Any]]]) -> tuple[dict[str, Any] | None, dict[str, list]]:
    """The parts' common arithmetic (None if none recorded it) and the notes of what some did not record.

    Precision and torch threads must be alike. The processors (and their instruction sets) are joined: parts
    on two CPU generations are still one study of disjoint runs, but a run repeats to the last digit only on
    the same processor; the merged record lists every processor, and ``processor_unrecorded`` the parts
    whose models trained before it was recorded (``arithmetic_unrecorded``: before any of it was)."""
    known: tuple[Path, dict[str, Any]] | None = None
    notes: dict[str, list] = {"arithmetic_unrecorded": [], "processor_unrecorded": []}
    joined: dict[str, set] = {"processor": set(), "isa": set()}
    for path, part in parts:
        arithmetic = part["settings"].get("arithmetic")
        name = str(part.get("label") or path.name)
        if not arithmetic:
            notes["arithmetic_unrecorded"].append(name)
            continue
        same = {k: arithmetic.get(k) for k in SAME_ARITHMETIC}
        if known is None:
            known = (path, same)
        elif same != known[1]:
            raise MergeError(
                f"{path}: trained in {json.dumps(same)}, {known[0]} in {json.dumps(known[1])}: "
                "other arithmetic gives other numbers, not one study (set amp/amp_dtype and the threads alike)"
            )
        if not arithmetic.get("processor"):
            notes["processor_unrecorded"].append(name)
        for key, values in joined.items():
            values.update(arithmetic.get(key) or [])
    notes = {k: v for k, v in notes.items() if v}
    if known is None:
        return None, notes
    return {**known[1], **{k: sorted(v) for k, v in joined.items() if v}}, notes


def check_same_settings(parts: Sequence[tuple[Path, dict[str, Any]]], per_sitting: Sequence[str]) -> None:
    """Every setting but those in ``per_sitting`` alike in every part."""
    first_path, first = parts[0]
    shared = {k: v for k, v in first["settings"].items() if k not in per_sitting}
    for path, part in parts[1:]:
        settings = {k: v for k, v in part["settings"].items() if k not in per_sitting}
        for key in sorted(set(shared) | set(settings)):
            if shared.get(key) != settings.get(key):
                raise MergeError(
                    f"{path}: setting {key!r} is {json.dumps(settings.get(key))}, in {first_path} it is "
                    f"{json.dumps(shared.get(key))}: not the same study"
                )


def check_same_study(parts: Sequence[tuple[Path, dict[str, Any]]]) -> None:
    """Every setting but ``PER_SITTING`` alike; every run key in one part only."""
    check_same_settings(parts, PER_SITTING)
    first_path, first = parts[0]
    owner = dict.fromkeys(first["per_seed"], first_path)
    for path, part in parts[1:]:
        for key in part["per_seed"]:
            if key in owner:
                raise MergeError(f"{path}: run {key} is also in {owner[key]}: each run may be published by one part")
            owner[key] = path


def merged_compute_runs(parts: Sequence[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The union of the parts' per-run costs (``compute_runs``): a run two parts both recorded (the pool
    pre-training of their seed) counted once, as the first part measured it; None when a part predates them."""
    if not all("compute_runs" in part for part in parts):
        return None
    union: dict[tuple[str, str, str], dict[str, Any]] = {}
    for part in parts:
        for run in part["compute_runs"]:
            union.setdefault((run["model"], run["stage"], run["run"]), run)
    return [union[k] for k in sorted(union, key=lambda k: (k[0], k[1], run_order(k[2])))]


def merged_compute(parts: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``model -> stage -> {cpu_min, wall_min, runs}`` over every part: rebuilt from the union of their
    per-run costs, or, when a part predates them, the parts' means weighted by their runs (a pre-training two
    such parts share is then counted in both)."""
    runs = merged_compute_runs(parts)
    if runs is not None:
        return compute.summarise_runs(runs)
    totals: dict[tuple[str, str], list[float]] = {}
    for part in parts:
        for model, stages in (part.get("compute") or {}).items():
            for stage, s in stages.items():
                t = totals.setdefault((model, stage), [0.0, 0.0, 0])
                t[0] += s["cpu_min"] * s["runs"]
                t[1] += s["wall_min"] * s["runs"]
                t[2] += s["runs"]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (model, stage), (cpu, wall, runs) in sorted(totals.items()):
        out.setdefault(model, {})[stage] = {
            "cpu_min": round(cpu / runs, 2),
            "wall_min": round(wall / runs, 2),
            "runs": int(runs),
        }
    return out


def run_order(key: str) -> tuple[int, int]:
    """``0/fold2`` -> (0, 2); ``1`` -> (1, -1): runs sorted by seed, then fold."""
    seed, _, fold = key.partition("/fold")
    return int(seed), int(fold) if fold else -1


def merged_header(
    kind: str, label: str, command: str, parts: Sequence[tuple[Path, dict[str, Any]]], runs: Callable[[dict], Any]
) -> dict[str, Any]:
    """A merged summary's kind, label, command and its parts (each part's label, command and ``runs(part)``)."""
    return {
        "kind": kind,
        "label": label,
        "command": command,
        "parts": [{"label": p.get("label"), "command": p.get("command"), "runs": runs(p)} for _, p in parts],
    }


def merge(paths: Sequence[Path], label: str, command: str) -> dict[str, Any]:
    """The summary of the union of the parts' runs (see the module docstring)."""
    if len(paths) < 2:
        raise MergeError("give at least two published summaries to merge")
    parts = [(Path(p), read_part(Path(p))) for p in paths]
    kinds = {part["kind"] for _, part in parts}
    if len(kinds) > 1:
        raise MergeError(f"{paths[-1]}: parts of kinds {sorted(kinds)}: a pipeline and an ablation are not one study")
    if kinds == {"ablation"}:
        return merge_ablations(parts, label, command)
    check_same_study(parts)
    per_seed = {
        key: record
        for key, record in sorted(
            ((k, r) for _, part in parts for k, r in part["per_seed"].items()), key=lambda item: run_order(item[0])
        )
    }
    rows: dict[str, dict[str, Any]] = {}
    for key, models in per_seed.items():
        for row, record in models.items():
            rows.setdefault(row, {})[key] = record
    first = parts[0][1]["settings"]
    external = list(first.get("external") or {})
    arithmetic, arithmetic_notes = merged_arithmetic(parts)
    ran = sorted({run_order(k)[1] for k in per_seed} - {-1})
    settings = {
        **first,
        "only_folds": None if not first.get("folds") or ran == list(range(first["folds"])) else ran,
        "student_arms": merged_arms(parts),
        "arithmetic": arithmetic,
        "wall_time_s": round(sum(part["settings"].get("wall_time_s") or 0 for _, part in parts), 1),
    }
    merged: dict[str, Any] = {
        **merged_header("pipeline", label, command, parts, lambda part: list(part["per_seed"])),
        "settings": settings,
        "summary": summarise(in_report_order(rows), external),
        "per_seed": per_seed,
    }
    merged.update(arithmetic_notes)
    for name in PER_RUN:
        if any(name in part for _, part in parts):
            joined = {k: v for _, part in parts for k, v in (part.get(name) or {}).items()}
            merged[name] = {k: joined[k] for k in sorted(joined, key=run_order)}
    compute_runs = merged_compute_runs([part for _, part in parts])
    if compute_runs is not None:
        merged["compute_runs"] = compute_runs
    merged["compute"] = merged_compute([part for _, part in parts])
    return merged


def fold_order(item: tuple[str, Any]) -> int:
    """``("fold2", ...)`` -> 2: an ablation's test sets sorted by fold."""
    return int(item[0].removeprefix("fold"))


def merge_ablations(parts: Sequence[tuple[Path, dict[str, Any]]], label: str, command: str) -> dict[str, Any]:
    """The ablation summary of the union of the parts' runs: what one ``ablate.py`` run over all their folds,
    seeds and arms would have published (every other setting alike; each (seed, fold, arm) in one part)."""
    check_same_settings(parts, ABLATION_PER_SITTING)
    arithmetic, arithmetic_notes = merged_arithmetic(parts)
    owner: dict[tuple[int, int, str], Path] = {}
    for path, part in parts:
        for run in part["per_run"]:
            key = (run["seed"], run["fold"], run["arm"])
            if key in owner:
                raise MergeError(
                    f"{path}: run seed {key[0]} fold {key[1]} arm {key[2]!r} is also in {owner[key]}: "
                    "each run may be published by one part"
                )
            owner[key] = path
    arms = merged_arms(parts, "arms", "arm") or {}
    per_run = sorted(
        (run for _, part in parts for run in part["per_run"]),
        key=lambda r: (r["seed"], r["fold"], list(arms).index(r["arm"])),
    )
    summary = ablation.summarise(per_run, list(arms))
    first = parts[0][1]["settings"]
    ran = sorted({r["fold"] for r in per_run})
    test_sets: dict[str, dict[str, list[str]]] = {}
    for _, part in parts:
        for seed, folds in (part.get("test_sets") or {}).items():
            test_sets.setdefault(seed, {}).update(folds)
    settings = {
        **first,
        "arms": arms,
        "seeds": sorted({r["seed"] for r in per_run}),
        "only_folds": None if ran == list(range(first["folds"])) else ran,
        "wall_time_s": sum(part["settings"].get("wall_time_s") or 0 for _, part in parts),
        "arithmetic": arithmetic,
    }
    merged = {
        **merged_header("ablation", label, command, parts, lambda part: len(part["per_run"])),
        "settings": settings,
        "summary": summary,
        "per_run": per_run,
        "test_sets": {seed: dict(sorted(f.items(), key=fold_order)) for seed, f in sorted(test_sets.items())},
        "table": ablation.table(summary),
    }
    merged.update(arithmetic_notes)
    return merged
