"""Soft targets for distillation: the teacher ensemble's probabilities, computed once and cached on disk.

The teachers are frozen, so each training image's ensemble output (at the training resolution,
before augmentation) never changes: ``SoftTargetCache.fill`` computes it once per image, one image per
teacher pass on the training device, and writes it as a float16 ``.npy``. One image per pass, because a
batched convolution's result depends (in its last bits, enough to flip float16 values) on the other images
of its batch: which images those are depends on which student filled the cache first (student arms share
it, two train side by side), so batched targets made a student's numbers depend on scheduling.
``LoadSoftTargetd`` puts the target into the item as ``soft``, ahead of the random augmentations, which then
move it with the image and label.

The cache folder is keyed by the teachers' checkpoint sha256 values, the temperature and the
deterministic preprocessing; each file by the image path, size and modification time. A new
selection, temperature, resolution or a replaced image therefore never reads a stale target.
MONAI has no cache for model outputs (PersistentDataset caches transform outputs, and would run the
teachers per item in loader workers), hence this module.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.data.utils import pickle_hashing
from monai.transforms import Compose, MapTransform, RandomizableTrait, Transform

from common.data.cache import source_aware_hash
from common.distill.teachers import TeacherEnsemble
from common.utils.io import atomic_path
from common.utils.metrics import update_metrics_file

logger = logging.getLogger(__name__)
SOFT_TARGET_MODES = ("cached", "online")


def _deterministic_prefix(transform: Callable) -> list[Any]:
    """The transforms up to the first random one (what PersistentDataset also hashes and caches)."""
    flat = transform.flatten().transforms if isinstance(transform, Compose) else list(transform)
    prefix = []
    for t in flat:
        if isinstance(t, RandomizableTrait) or not isinstance(t, Transform):
            break
        prefix.append(t)
    return prefix


def _ensemble_fingerprint(ensemble: TeacherEnsemble) -> list[str]:
    if ensemble.fingerprint:
        return list(ensemble.fingerprint)
    # an ensemble built in code (not from a selection): hash its weights
    digest = hashlib.sha256()
    for name, tensor in ensemble.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return [digest.hexdigest()]


class SoftTargetCache:
    """Per-image ensemble probabilities on disk under ``<cache_dir>/soft_targets/<key>/``.

    The teachers are given to ``fill`` (not here), so building the bundle's components never loads them.

    Args:
        transform: the deterministic preprocessing that produces the image the student sees before
            augmentation (the bundle's ``load_transforms``); only its deterministic prefix is used.
        cache_dir: the bundle's cache folder.
        device: where the teachers run.
        batch_size: images the loader reads at a time; the teachers still see one image per pass (above).
        num_workers: loader workers for reading the images.
    """

    def __init__(
        self,
        transform: Callable | Sequence[Callable],
        cache_dir: str | Path,
        device: torch.device | str = "cpu",
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        composed = transform if isinstance(transform, Compose) else Compose(transform)
        self.transform = Compose(_deterministic_prefix(composed))
        self.cache_dir, self.device = Path(cache_dir), torch.device(device)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.folder: Path | None = None
        self.index: dict[str, str] = {}
        self.counts = {"computed": 0, "reused": 0}

    def folder_for(self, ensemble: TeacherEnsemble) -> Path:
        """The cache folder of ``ensemble``: keyed by its teachers, temperature, combination rule and the
        preprocessing."""
        facts = {
            "teachers": _ensemble_fingerprint(ensemble),
            "temperature": ensemble.temperature,
            "transform": pickle_hashing(self.transform.transforms).decode(),
        }
        if ensemble.combine != "mean":  # the mean's key stays what it was before the rule was a choice: its
            facts["combine"] = ensemble.combine  # caches stay valid
        key = pickle_hashing(facts).decode()
        return self.cache_dir / "soft_targets" / key

    def file_for(self, image: str) -> Path:
        """The cache file of one image (named by its path, size and modification time)."""
        if self.folder is None:
            raise RuntimeError("SoftTargetCache.fill() has not been called")
        return self.folder / f"{source_aware_hash({'image': str(image)}).decode()}.npy"

    def fill(self, ensemble: TeacherEnsemble, items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Make sure every item's soft target from ``ensemble`` is on disk; return how many were computed
        and reused. Under torch.distributed each rank computes its share, then all wait for each other.
        """
        self.folder = self.folder_for(ensemble)
        self.index = {}
        images = sorted({str(item["image"]) for item in items})
        missing = [p for p in images if not self.file_for(p).is_file()]
        rank, world = 0, 1
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self._compute(ensemble, missing[rank::world])
        if distributed:
            torch.distributed.barrier()
        self.index.update({p: str(self.file_for(p)) for p in images})
        self.counts = {"computed": len(missing), "reused": len(images) - len(missing)}
        logger.info(
            "soft targets in %s: %d computed, %d reused", self.folder, self.counts["computed"], self.counts["reused"]
        )
        return dict(self.counts)

    def _compute(self, ensemble: TeacherEnsemble, paths: list[str]) -> None:
        if not paths:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        dataset = Dataset([{"image": p} for p in paths], transform=self.transform)
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers, shuffle=False)
        done = 0
        for batch in loader:
            images = torch.as_tensor(batch["image"]).to(self.device)
            for path, image in zip(paths[done : done + len(images)], images, strict=True):
                p = ensemble.probabilities(image[None])[0]  # alone: the same bits whatever else is missing
                with atomic_path(self.file_for(path)) as tmp:
                    np.save(tmp, p.cpu().numpy().astype(np.float16))
            done += len(images)

    def load(self, image: str) -> np.ndarray:
        """The cached soft target of one image, float32 (1, H, W)."""
        path = self.index.get(str(image))
        if path is None:
            raise KeyError(
                f"no soft target for {image}: SoftTargetCache.fill() was not given this image "
                "(the distill bundle fills the cache for train#dataset before training)"
            )
        return np.load(path).astype(np.float32)


class LoadSoftTargetd(MapTransform, RandomizableTrait):
    """Add the cached soft target of ``d[ref_key]``'s source image as ``d[key]`` (1, H, W) float32.

    Deterministic, but marked ``RandomizableTrait`` on purpose: that ends PersistentDataset's cached
    prefix here, so the soft targets live only in their own cache (keyed by the teachers), never
    frozen into the image cache.
    """

    def __init__(self, cache: SoftTargetCache, key: str = "soft", ref_key: str = "image") -> None:
        super().__init__([ref_key])
        self.cache, self.key, self.ref_key = cache, key, ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        source = ref.meta["filename_or_obj"] if isinstance(ref, MetaTensor) else ref
        soft = torch.from_numpy(self.cache.load(str(source)))
        if tuple(soft.shape[-2:]) != tuple(ref.shape[-2:]):
            raise ValueError(f"{source}: soft target {tuple(soft.shape)} does not match the image {tuple(ref.shape)}")
        d[self.key] = MetaTensor(soft, meta=dict(ref.meta)) if isinstance(ref, MetaTensor) else soft
        return d


def prepare_soft_targets(
    mode: str,
    ensemble: TeacherEnsemble,
    cache: SoftTargetCache,
    items: Sequence[Mapping[str, Any]],
    metrics_file: str = "",
    settings: Mapping[str, Any] | None = None,
    trainer: Any = None,
) -> dict[str, Any]:
    """Set up where the soft targets come from, just before training.

    Checks ``mode``; ``cached``: fills the cache for ``items``; ``online``: hands the ensemble to
    ``trainer`` (a ``DistillationTrainer``). The teachers are only loaded here, at run time, so building
    the bundle's components (MONAI's property checks, MONAI Label) needs no selection. Records the set-up
    (teachers, their sha256, mode, cache counts, ``settings``) as the ``distillation`` section of
    ``metrics_file`` (skipped when empty, e.g. on non-main ranks).
    """
    if mode not in SOFT_TARGET_MODES:
        raise ValueError(f"soft_targets must be one of {SOFT_TARGET_MODES}, got {mode!r}")
    if trainer is not None:
        trainer.set_ensemble(ensemble if mode == "online" else None)
    summary: dict[str, Any] = {
        "teachers": list(ensemble.tasks),
        "teacher_sha256": list(ensemble.fingerprint),
        "soft_targets": mode,
        **dict(settings or {}),
    }
    if mode == "cached":
        counts = cache.fill(ensemble, items)
        summary["cache"] = {"folder": str(cache.folder), **counts}
    logger.info("distillation: %s", summary)
    if metrics_file:
        update_metrics_file(metrics_file, distillation=summary)
    return summary
