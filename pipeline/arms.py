"""Arms: named sets of bundle overrides (``NAME key=value ...``) trained side by side on the same data.

``scripts/ablate.py --arm`` compares arms of one bundle; ``scripts/run_pipeline.py --student-arm`` trains
student variants (e.g. KD temperature x alpha) beside the default student from the same teachers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.paths import BUNDLES
from pipeline.scales import check_overrides, parse_overrides

ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a folder name: no dots (``.partial``)
#: the distillation settings that change the teacher ensemble itself (not only how the student learns from it)
ENSEMBLE_KEYS = ("teacher_tasks", "teacher_top_k", "teacher_combine")


def changes_ensemble(overrides: Mapping[str, Any]) -> bool:
    """Whether a student arm distils another teacher ensemble than the default student's (then the
    pipeline evaluates that ensemble too)."""
    return any(key in overrides for key in ENSEMBLE_KEYS)


def parse_arms(
    specs: Sequence[Sequence[str]] | None, default: str | None, option: str = "--arm"
) -> dict[str, dict[str, Any]]:
    """``--arm NAME key=value ...`` (repeated) -> {name: overrides}; none: one arm ``default`` (the bundle's
    own settings), or no arm when ``default`` is None. Stops (``SystemExit``, naming ``option``) on a bad or
    repeated name and on an item without ``=``."""
    if not specs:
        return {default: {}} if default else {}
    arms: dict[str, dict[str, Any]] = {}
    for name, *items in specs:
        if not ARM_NAME.fullmatch(name):
            raise SystemExit(
                f"error: {option} expects NAME [key=value ...]; {name!r} is no name (letters, digits, _, -)"
            )
        if name in arms:
            raise SystemExit(f"error: {option} {name} is given twice: every arm needs its own name")
        bad = [item for item in items if "=" not in item]
        if bad:
            raise SystemExit(f"error: {option} {name}: expected key=value, got {bad[0]!r}")
        arms[name] = parse_overrides(items)
    return arms


def check_arms(arms: Mapping[str, dict[str, Any]], bundle: str, option: str = "--arm") -> None:
    """Stop (``SystemExit``) when the bundle does not exist or an arm sets a key the bundle does not have."""
    if not (BUNDLES / bundle / "configs").is_dir():
        known = ", ".join(sorted(p.parent.name for p in BUNDLES.glob("*/configs")))
        raise SystemExit(f"error: --bundle {bundle}: no such bundle (known: {known})")
    for name, overrides in arms.items():
        try:
            check_overrides(overrides, [bundle])
        except SystemExit as e:
            raise SystemExit(str(e).replace("error: --set ", f"error: {option} {name}: ")) from None
