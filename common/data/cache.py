"""Cache keys for MONAI's PersistentDataset that follow the source files, not only their names.

PersistentDataset keys its cache by the data item (plus, with ``hash_transform``, by the
deterministic transforms, so a new resolution gets new entries). An item only names its files,
so a file replaced in place would keep serving stale tensors: this key adds each file's size
and modification time.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from monai.data.utils import pickle_hashing
from monai.utils.enums import InterpolateMode, TraceKeys

# Cached items are MetaTensors (track_meta=True) whose applied operations name TraceKeys members;
# PersistentDataset loads with weights_only=True, which refuses that (a str Enum of MONAI's) unless
# allow-listed, and then deletes the entry as corrupt: every epoch would decode the images again.
# InterpolateMode: what Resized records when its mode is left at the default.
torch.serialization.add_safe_globals([TraceKeys, InterpolateMode])

PATH_KEYS = ("image", "label")
# bumped when what the cache stores changes (2: MetaTensors with their metadata, track_meta=True)
CACHE_FORMAT = 2


def source_aware_hash(item: dict[str, Any]) -> bytes:
    """Hash of the item plus (size, mtime) of every file it names under ``image``/``label``."""
    stamps = {}
    for key in PATH_KEYS:
        value = item.get(key)
        if isinstance(value, str) and os.path.isfile(value):
            st = os.stat(value)
            stamps[key] = (st.st_size, st.st_mtime_ns)
    return pickle_hashing({"item": item, "stamps": stamps, "format": CACHE_FORMAT})
