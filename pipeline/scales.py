"""Scale presets (epochs, resolution) and the user's ``--set key=value`` bundle overrides."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

# settings per scale; anything else comes from the bundle configs (or --set key=value). The demo scale
# fits the whole protocol into about 10 minutes on 2 CPU cores (measured: README); the student's epoch
# covers every training image (labelled and not), hence its fewer epochs.
SCALES: dict[str, dict[str, Any]] = {
    "demo": {
        "image_size": 64, "batch_size": 4, "learning_rate": 0.002, "epochs": 32, "pretrain_epochs": 2,
        "val_interval": 4,
    },
    "small": {"image_size": 128, "batch_size": 8, "epochs": 60, "pretrain_epochs": 10, "val_interval": 2},
    "full": {},
}  # fmt: skip
# per-bundle settings of a scale, on top of SCALES (the user's --set still wins)
PER_BUNDLE: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {"distill": {"epochs": 30}},
    "small": {"distill": {"epochs": 20}},
}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["epochs=60", "aux_weights={...}"]`` -> overrides; values are JSON where they parse, else strings.

    Raises ``SystemExit`` (the message only) on an item without ``=``.
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
    return out


def bundle_overrides(scale: str, bundle: str, user: dict[str, Any]) -> dict[str, Any]:
    """A bundle's overrides at ``scale``: the scale preset, its per-bundle settings, then the user's."""
    overrides = dict(SCALES[scale])
    if not bundle.endswith("_pretrain"):
        overrides.pop("pretrain_epochs", None)
    return {**overrides, **PER_BUNDLE.get(scale, {}).get(bundle, {}), **user}
