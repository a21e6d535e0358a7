"""What the generator reads: the baseline bundle, the lambda sweep and the published results."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pipeline.paths import BUNDLES, REPO

BASELINE = BUNDLES / "baseline"
SWEEP_FILE = REPO / "scripts" / "lambda_sweep.json"  # written by scripts/sweep_lambda.py
RESULTS_DIR = REPO / "scripts" / "results"  # written by scripts/run_pipeline.py --publish
GENERATOR = "scripts/generate_bundles.py"


def baseline_text(rel: str) -> str:
    """A file of the baseline bundle, by path relative to the bundle folder."""
    return (BASELINE / rel).read_text()


def load_baseline(name: str) -> dict[str, Any]:
    """A baseline config (``configs/<name>``), parsed."""
    return json.loads(baseline_text(f"configs/{name}"))


def load_sweep() -> dict[str, Any]:
    """The lambda sweep ({} when it has not been run)."""
    return json.loads(SWEEP_FILE.read_text()) if SWEEP_FILE.is_file() else {}


def load_published() -> list[dict[str, Any]]:
    """Every published result file, in file-name order."""
    return [published for _, published in load_published_files()]


def load_published_files() -> list[tuple[str, dict[str, Any]]]:
    """(file name, content) of every published result file, in file-name order, less the parts that
    ``scripts/merge_results.py`` merged into another published file (their runs are in the merge)."""
    files = [(f.name, json.loads(f.read_text())) for f in sorted(RESULTS_DIR.glob("*.json"))]
    merged = merged_part_commands(content for _, content in files)
    return [(name, content) for name, content in files if content.get("command") not in merged]


def merged_part_commands(published: Iterable[dict[str, Any]]) -> set[str]:
    """The commands of every part a published merge lists (a sitting's command names its folds, seeds and
    output file, so it identifies the part)."""
    return {part["command"] for content in published for part in content.get("parts", []) if part.get("command")}
