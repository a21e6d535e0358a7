"""Where the repository is, and paths as published results record them (never this machine's layout).

A published summary (``scripts/results/*.json``, ``scripts/lambda_sweep.json``) must read the same on
every machine: a path inside the repository is written relative to its root (``runs/multidomain.json``),
any other path as the user gave it (``../shared/data/cxr_lungs``), never resolved to an absolute path.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.utils.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"


def portable_path(path: str | Path) -> str:
    """``path`` relative to the repository root when it lies inside it, else exactly as given."""
    resolved = Path(path).expanduser().resolve()
    if resolved == REPO or REPO in resolved.parents:
        return resolved.relative_to(REPO).as_posix() or "."
    return str(path)


def portable(value: Any) -> Any:
    """``value`` with every absolute path string inside the repository made repository-relative."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable(v) for v in value]
    if isinstance(value, Path) or (isinstance(value, str) and os.path.isabs(value)):
        return portable_path(value)
    return value


def portable_command(script: str, argv: Sequence[str]) -> str:
    """``python <script> <argv>`` with absolute paths (also ``KEY=/path`` values) inside the repository relative."""
    words = []
    for word in argv:
        key, eq, value = word.partition("=")
        if eq and not key.startswith("-") and os.path.isabs(value):
            words.append(f"{key}={portable_path(value)}")
        else:
            words.append(portable(word))
    return shlex.join(["python", script, *words])  # quoted: the published command runs as printed


def write_results(
    path: Path, results: dict[str, Any], kind: str, table: str, publish_to: str | Path | None = None
) -> None:
    """Write a comparison's ``results`` to ``path``, publish them (with ``kind`` and the markdown ``table``)
    when ``publish_to`` is given, and print the table."""
    atomic_write_json(path, results)
    if publish_to:
        publish(publish_to, {"kind": kind, **results, "table": table})
    print(table)
    print(f"wrote {path}")


def without_dirs(value: Any) -> Any:
    """``value`` without its ``dir`` entries (where a run folder lay on the machine that ran it)."""
    if isinstance(value, dict):
        return {k: without_dirs(v) for k, v in value.items() if k != "dir"}
    return value


def publish(target: str | Path, summary: dict[str, Any]) -> None:
    """Write a run's summary where the bundle READMEs read it (``scripts/results/``), every path in it portable.
    The per-run records (``per_seed``) stay, without their run folders: summaries of the same study published
    by different sittings (other folds or seeds) merge from them (``pipeline.merge``)."""
    published = {**summary, "per_seed": without_dirs(summary["per_seed"])} if "per_seed" in summary else summary
    atomic_write_json(target, portable(published))
