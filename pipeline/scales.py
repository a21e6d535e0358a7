"""Scale presets (epochs, resolution) and the user's ``--set key=value`` bundle overrides (checked against the
keys of the bundles a run uses: a typo stops the run with the close matches)."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.paths import BUNDLES

# settings per scale; anything else comes from the bundle configs (or --set key=value). The demo scale
# fits the whole protocol into about 10 minutes on 2 CPU cores (measured: README); its 64 px suit the
# synthetic demo's large lesions, not real pneumothorax: on 55 real SIIM-ACR images the baseline learns no
# pneumothorax at 64, 128 or 256 px (README, "Imbalanced real pneumothorax"); the SIIM-ACR winners trained at
# 512-1024 px on about 10,000 images. Use `full` (the bundles' 256 px) or more for real data. The student's
# epoch covers every training image (labelled and not), hence its fewer epochs.
SCALES: dict[str, dict[str, Any]] = {
    "demo": {
        "image_size": 64, "batch_size": 4, "learning_rate": 0.002, "epochs": 32, "pretrain_epochs": 2,
        "val_interval": 4,
    },
    "small": {"image_size": 128, "batch_size": 8, "epochs": 60, "pretrain_epochs": 10, "val_interval": 2},
    "full": {},
}  # fmt: skip
# per-bundle settings of a scale, on top of SCALES (the user's --set still wins)
# mean_teacher: its EMA teacher's memory (1 / (1 - decay) steps) must be short against the run: at the demo
# scale (352 steps) the default decay 0.99 was still catching up at the last epoch (validation dice_hmean
# 0.684, rising); 0.95 reached 0.919 (baseline 0.915) on the same validation split. small: about 420 steps.
PER_BUNDLE: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {"distill": {"epochs": 30}, "mean_teacher": {"ema_decay": 0.95}},
    "small": {"distill": {"epochs": 20}, "mean_teacher": {"ema_decay": 0.95}},
}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["epochs=60", "aux_weights={...}"]`` -> overrides; values are JSON where they parse, else strings.

    Raises ``SystemExit`` (the message only) on an item without ``=`` and on a null value (MONAI's bundle
    command line would drop it and keep the default).
    """
    out = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not key or not eq:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
        if out[key] is None:  # monai.bundle's command line drops a None value as "not given"
            raise SystemExit(
                f"{item}: a bundle run ignores null (the default would silently stay); "
                "give the setting's own word for off, e.g. pos_sample_rate=off"
            )
    return out


def bundle_overrides(scale: str, bundle: str, user: dict[str, Any]) -> dict[str, Any]:
    """A bundle's overrides at ``scale``: the scale preset, its per-bundle settings, then the user's."""
    overrides = dict(SCALES[scale])
    if not bundle.endswith("_pretrain"):
        overrides.pop("pretrain_epochs", None)
    return {**overrides, **PER_BUNDLE.get(scale, {}).get(bundle, {}), **user}


def config_keys(bundle: Path) -> set[str]:
    """The settings a bundle has: the top-level keys of its ``configs/*.json`` (``a`` for ``a#b``; not the
    metadata, not ``_x_``)."""
    keys: set[str] = set()
    for config in (Path(bundle) / "configs").glob("*.json"):
        if config.name != "metadata.json":
            keys |= {k.split("#")[0] for k in json.loads(config.read_text()) if not k.startswith("_")}
    return keys


def check_overrides(user: dict[str, Any], bundles: Iterable[str] | None = None) -> None:
    """Stop (``SystemExit``, the message only) when a ``--set`` key is in none of ``bundles`` (names in
    ``bundles/``; default all), listing the known keys, close matches first. A key only some of the bundles
    have (HSSL's ``multidomain_datalist``) is fine: the others ignore it. ``a#b`` is checked as ``a``."""
    names = sorted(set(bundles) if bundles is not None else (p.parent.name for p in BUNDLES.glob("*/configs")))
    known = set().union(*(config_keys(BUNDLES / n) for n in names))
    unknown = [k for k in user if k.split("#")[0] not in known]
    if not unknown:
        return
    lines, close = [], []
    for key in unknown:
        matches = difflib.get_close_matches(key.split("#")[0], sorted(known), n=5, cutoff=0.6)
        close += [m for m in matches if m not in close]
        hint = f"; did you mean {', '.join(matches)}?" if matches else ""
        lines.append(f"error: --set {key}: no bundle this run uses has this setting{hint}")
    rest = sorted(known - set(close))
    lines.append(f"known keys of {', '.join(names)}: {', '.join([*close, *rest])}")
    raise SystemExit("\n".join(lines))
