"""The HSSL bundles' auxiliary data: a multi-domain datalist plus the target's training images.

``scripts/prepare_multidomain.py`` writes the multi-domain datalist (one item per 2D image or
volume slice, with its dataset ``domain`` and modality ``group``); the target task's training
images (labelled and unlabelled, masks dropped) join as one more domain, ``target``. Domain
indices are assigned here, over the domains actually used, so a subset (``domains``, e.g. chest
X-ray only for single-domain pre-training) gets contiguous class indices.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.data.multidomain import GROUPS

TARGET_DOMAIN = "target"


def load_multidomain(datalist_file: str | Path) -> dict[str, Any]:
    """Read a multi-domain datalist; a clear error when it is missing."""
    path = Path(datalist_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"multi-domain datalist {path} not found: run scripts/prepare_multidomain.py (or `make demo-data` for "
            "the synthetic demo set), or pass --multidomain_datalist ''  to pre-train on the target images alone"
        )
    return json.loads(path.read_text())


def hssl_aux_data(
    multidomain_file: str,
    target: dict[str, list[dict[str, Any]]],
    domains: Sequence[str] | None = None,
    include_target: bool = True,
    target_group: str = "xray",
) -> dict[str, Any]:
    """Items (``image``, ``domain``, ``group``, ``domain_index``, ``group_index``[, ``frame``, ``axis``]) of
    the aggregate: the multi-domain datalist (restricted to ``domains`` when given; none when
    ``multidomain_file`` is empty) plus, with ``include_target``, the target's training images."""
    source = load_multidomain(multidomain_file) if multidomain_file else {"domains": [], "items": []}
    wanted = list(source["domains"]) if domains is None else list(domains)
    unknown = sorted(set(wanted) - set(source["domains"]))
    if unknown:
        raise KeyError(f"domains {unknown} are not in {multidomain_file} (it has {source['domains']})")
    if target_group not in GROUPS:
        raise ValueError(f"target_group {target_group!r} is not one of {list(GROUPS)}")
    names = [*wanted, TARGET_DOMAIN] if include_target else wanted
    if not names:
        raise ValueError("the HSSL aggregate is empty: give a multi-domain datalist or include the target images")
    kept = [dict(item) for item in source["items"] if item["domain"] in wanted]
    if include_target:
        # the same keys as the multi-domain items (a batch mixing both must collate)
        kept += [{"image": it["image"], "domain": TARGET_DOMAIN, "group": target_group} for it in _training(target)]
    for item in kept:
        item["domain_index"] = names.index(item["domain"])
        item["group_index"] = GROUPS.index(item["group"])
    counts = {"domain": dict(Counter(i["domain"] for i in kept)), "group": dict(Counter(i["group"] for i in kept))}
    return {"domains": names, "groups": list(GROUPS), "items": kept, "counts": counts}


def _training(target: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [*target.get("training_labelled", []), *target.get("training_unlabelled", [])]
