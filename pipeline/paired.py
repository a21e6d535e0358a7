"""Paired differences between two models over the same runs, read from published summaries.

Every comparison the few-label study reports ("+0.030 on validation, standard error 0.009, ahead in 5 of 5
folds") pairs two models run by run: the same seed and fold, so the same split. Each side is one or more
``FILE:NAME`` sources: a published summary (``run_pipeline.py --publish``, a merge, or ``ablate.py --publish``)
and a model in it (a pipeline row such as ``rotation_joint`` or ``student (distill)``, or an ablation arm such
as ``px256``). Several sources on one side join their runs (seed 0 from one file, seed 1 from another); a run
given twice on one side is an error. Runs on one side only are not paired and are listed, never dropped
silently. The numbers are the mean of ``a - b``, its standard error (sample std / sqrt(n)) and how many runs
``a`` leads. With two more sides ``c`` and ``d``, the difference of differences ``(a - b) - (c - d)`` run by run
(e.g. what 256 px adds to the student beyond what it adds to the baseline) over the runs all four share.
``scripts/paired.py`` is the front end.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.merge import read_part, run_order

#: a run: (seed, fold)
RunKey = tuple[int, int]


class PairingError(ValueError):
    """A source that cannot be read, a model not in its file, a run given twice, or nothing to pair."""


@dataclass(frozen=True)
class Source:
    """One model in one published summary: ``FILE:NAME``."""

    path: Path
    name: str

    @classmethod
    def parse(cls, text: str) -> Source:
        """``scripts/results/x.json:px256`` (the name may hold spaces and parentheses; the first ``:`` after
        ``.json`` splits)."""
        path, sep, name = text.partition(".json:")
        if not sep or not name:
            raise PairingError(f"{text!r}: give a source as FILE.json:NAME (a row or an arm of that summary)")
        return cls(Path(path + ".json"), name)

    def __str__(self) -> str:
        return f"{self.path}:{self.name}"


def runs_of(source: Source) -> dict[RunKey, dict[str, Any]]:
    """The source's per-run records (``val``, ``test``, ...) by (seed, fold)."""
    try:
        summary = read_part(source.path)
    except ValueError as e:
        raise PairingError(str(e)) from None
    if summary["kind"] == "ablation":
        found = {(r["seed"], r["fold"]): r for r in summary["per_run"] if r["arm"] == source.name}
        names = sorted({r["arm"] for r in summary["per_run"]})
    else:
        per_seed = summary["per_seed"]
        found = {run_order(k): models[source.name] for k, models in per_seed.items() if source.name in models}
        names = sorted({name for models in per_seed.values() for name in models})
    if not found:
        raise PairingError(f"{source.path}: no model {source.name!r}; it has {', '.join(names)}")
    return found


def joined_runs(sources: Sequence[Source]) -> dict[RunKey, dict[str, Any]]:
    """The runs of several sources of one side; a run in two of them is an error naming both."""
    runs: dict[RunKey, dict[str, Any]] = {}
    owner: dict[RunKey, Source] = {}
    for source in sources:
        for key, record in runs_of(source).items():
            if key in owner:
                raise PairingError(f"{source}: run seed {key[0]} fold {key[1]} is also given by {owner[key]}")
            runs[key], owner[key] = record, source
    return runs


def metric_of(record: dict[str, Any], split: str, metric: str, source: str, key: RunKey) -> float:
    """``record[split][metric]`` as a float; a missing one is an error naming the source, run and metric."""
    value = (record.get(split) or {}).get(metric)
    if not isinstance(value, int | float):
        raise PairingError(f"{source}: run seed {key[0]} fold {key[1]} has no {split} {metric!r}")
    return float(value)


def compared(a: dict[RunKey, float], b: dict[RunKey, float], label: str, names: tuple[str, str]) -> dict[str, Any]:
    """``a - b`` of two per-run values over the runs both have: per run, both means, the mean difference, its
    standard error and how many runs ``a`` leads; ``label`` names the metric."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise PairingError(f"{names[0]} and {names[1]} share no run (seed, fold): nothing to pair")
    diffs = [a[k] - b[k] for k in keys]
    n = len(diffs)
    return {
        "metric": label,
        "n": n,
        "a_mean": statistics.fmean(a[k] for k in keys),
        "b_mean": statistics.fmean(b[k] for k in keys),
        "mean": statistics.fmean(diffs),
        "se": statistics.stdev(diffs) / n**0.5 if n > 1 else None,
        "ahead": sum(d > 0 for d in diffs),
        "per_run": dict(zip(keys, diffs, strict=True)),
    }


def values(runs: dict[RunKey, dict[str, Any]], split: str, metric: str, name: str) -> dict[RunKey, float]:
    """Each run's ``split`` ``metric`` of one side."""
    return {k: metric_of(record, split, metric, name, k) for k, record in runs.items()}


def paired(
    a: dict[RunKey, dict[str, Any]], b: dict[RunKey, dict[str, Any]], split: str, metric: str, names: tuple[str, str]
) -> dict[str, Any]:
    """``a - b`` in ``split`` ``metric`` over the runs both sides have: per run, mean, standard error, leads."""
    keys = sorted(set(a) & set(b))  # in run order; a metric missing from a run nobody pairs is no error
    a_values = values({k: a[k] for k in keys}, split, metric, names[0])
    return compared(a_values, values({k: b[k] for k in keys}, split, metric, names[1]), f"{split} {metric}", names)


def difference_of_differences(
    sides: Sequence[dict[RunKey, dict[str, Any]]], split: str, metric: str, names: Sequence[str]
) -> dict[str, Any]:
    """``(a - b) - (c - d)`` in ``split`` ``metric`` over the runs all four ``sides`` have; ``a_mean`` and
    ``b_mean`` are the means of ``a - b`` and ``c - d`` over those runs."""
    keys = sorted(set.intersection(*(set(side) for side in sides)))
    if not keys:
        raise PairingError(f"{', '.join(names)} share no run (seed, fold): nothing to pair")
    a, b, c, d = (
        values({k: side[k] for k in keys}, split, metric, name) for side, name in zip(sides, names, strict=True)
    )
    first = {k: a[k] - b[k] for k in keys}
    second = {k: c[k] - d[k] for k in keys}
    return compared(first, second, f"{split} {metric}", (f"{names[0]} - {names[1]}", f"{names[2]} - {names[3]}"))


def not_shared(sides: Sequence[dict[RunKey, Any]]) -> list[list[RunKey]]:
    """Per side, its runs that some other side lacks (they are not paired; for two sides: the runs only ``a``
    has, and those only ``b`` has)."""
    shared = set.intersection(*(set(side) for side in sides))
    return [sorted(set(side) - shared) for side in sides]


def line(result: dict[str, Any], labels: tuple[str, str] = ("a", "b")) -> str:
    """``val dice_hmean: a 0.250, b 0.198, a - b +0.052 (se 0.012), a ahead in 5 of 5`` (``labels``: the two
    compared, e.g. ``("(a - b)", "(c - d)")``)."""
    se = "-" if result["se"] is None else f"{result['se']:.3f}"
    first, second = labels
    return (
        f"{result['metric']}: {first} {result['a_mean']:.3f}, {second} {result['b_mean']:.3f}, {first} - {second} "
        f"{result['mean']:+.3f} (se {se}), {first} ahead in {result['ahead']} of {result['n']}"
    )
