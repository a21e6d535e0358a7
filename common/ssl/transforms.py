"""MONAI dictionary transform that makes a task's pretext for one sample (seeded, ``Randomizable``).

It runs the same ``SSLTask.pretext`` code as the engines, which call it on whole batches on the
training device; this per-sample form is for MONAI pipelines (e.g. DataLoader workers) and tests.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from common.ssl.registry import SSLTask, create_task


class RandPretextd(Randomizable, MapTransform):
    """Add ``<key>_aux_input`` (and ``_aux_target`` / ``_aux_mask`` when the task has them).

    For ``contrastive`` the input holds the two views stacked on the first axis (2, C, H, W).
    """

    def __init__(self, task: SSLTask | str, keys: KeysCollection = "image", **task_options: Any) -> None:
        MapTransform.__init__(self, keys)
        self.task = create_task(task, **task_options) if isinstance(task, str) else task
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key])
            generator = torch.Generator(device=image.device).manual_seed(self._seed)
            pretext = self.task.pretext(image[None], generator)
            d[f"{key}_aux_input"] = pretext.input if pretext.input.shape[0] > 1 else pretext.input[0]
            if pretext.target is not None:
                d[f"{key}_aux_target"] = pretext.target[0]
            if pretext.mask is not None:
                d[f"{key}_aux_mask"] = pretext.mask[0]
        return d
