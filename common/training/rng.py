"""Every random stream a training run carries across an epoch boundary, as one checkpointable object.

``--resume true`` restarts a run at the start of the epoch after its last ``checkpoint_epoch=N.pt``. It
trains on to the same weights as the uninterrupted run (bit for bit on the CPU) only if every random
stream is where the uninterrupted run had it at that point. ``RandomState`` sits in the per-epoch
``CheckpointSaver``'s ``save_dict`` and the ``CheckpointLoader``'s ``load_dict``, next to the model, and
holds:

* the process-wide generators: python's ``random``, numpy's global one, torch's CPU generator and every
  CUDA device's (when there are any);
* the ``R`` of every MONAI ``Randomizable`` reachable from the engines' data loaders' datasets (the
  augmentations: ``PersistentDataset`` caches only the deterministic steps, the random ones run anew);
* the loaders' own ``torch.Generator`` s (a DataLoader's ``generator``, a sampler's, e.g. HSSL's
  domain-balanced ``WeightedRandomSampler``);
* each engine's own generators (the ``state_dict`` of its ``objective``: the pretext generator).

When. ``CheckpointSaver`` writes at EPOCH_COMPLETED after the bundle's other epoch handlers (it is attached
in ``run``, after the trainer was built with them), so the state includes what the validation consumed
(each data loader iterator draws its base seed from torch's generator). ``CheckpointLoader`` restores at
STARTED, before the first epoch's iterator exists: that iterator's base seed and the ``RandomSampler``'s
shuffle seed are then drawn from the restored generator, as the uninterrupted run drew them. Objects the
bundle builds before training (a MONAI DataLoader seeds its transforms from torch's generator when it is
built) may consume randomness in another order in a resumed run: the restore overwrites all of it.

Data loader workers. With ``num_workers = 0`` (the bundles' CPU default) the transforms run in this
process: restored exactly. With workers, MONAI's ``worker_init_fn`` seeds each worker's transforms from the
base seed its iterator drew from torch's generator, which the restore covers when workers start anew each
epoch (``persistent_workers=False``). Persistent workers (the bundles' setting when there are workers) keep
their transforms' streams in their own processes across epochs, out of this object's reach: a resumed run
is then correct but its augmentations differ from the uninterrupted run's.

Distributed runs. Only rank 0 saves. Every rank restores the engines' generators (the pretext generator
is seeded alike on every rank), but only the rank that saved restores the per-process streams: the other
ranks keep their fresh ``seed + rank`` ones rather than take rank 0's, which would make all ranks augment
alike. So a multi-process resume is correct, not identical.

``built_apart`` builds something (a joint bundle's task heads) from its own seeded stream, leaving the
process-wide one where it was: what a variant adds must not change what the baseline's objects draw.
"""

from __future__ import annotations

import logging
import random
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import PurePath
from typing import Any, TypeVar

import numpy as np
import torch
from monai.transforms import Randomizable

logger = logging.getLogger(__name__)

# what is read from an engine: its data loaders, and its own objects with generators (state_dict-able)
ENGINE_LOADERS = ("data_loader", "aux_data_loader")
ENGINE_STATES = ("objective",)
# the public attributes of a DataLoader that lead to randomness (its private ones hold the live iterator)
LOADER_PARTS = ("dataset", "sampler", "batch_sampler", "generator")
_LEAVES = (str, bytes, int, float, complex, bool, type(None), PurePath, torch.Tensor, np.ndarray, torch.nn.Module)
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
_MAX_DEPTH = 40
T = TypeVar("T")


def _rank() -> int:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_rank() if distributed else 0


def _numpy_state(rng: np.random.RandomState | None = None) -> dict[str, Any]:
    """A numpy MT19937 state as tensors and numbers (a checkpoint loads with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = (rng.get_state() if rng is not None else np.random.get_state())[:5]
    if name != "MT19937":
        raise ValueError(f"unexpected numpy bit generator {name!r}")
    keys = torch.from_numpy(keys.astype(np.int64))
    return {"keys": keys, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_state(state: Mapping[str, Any], rng: np.random.RandomState | None = None) -> None:
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    value = ("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"]))
    (np.random if rng is None else rng).set_state(value)


def _python_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    return {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def _set_python_state(state: Mapping[str, Any]) -> None:
    internal = tuple(int(v) for v in state["state"].tolist())
    random.setstate((int(state["version"]), internal, state["gauss_next"]))


def _children(obj: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(obj, Mapping):
        yield from obj.items()
    elif isinstance(obj, (list, tuple)):
        yield from enumerate(obj)
    elif isinstance(obj, torch.utils.data.DataLoader):
        yield from ((name, getattr(obj, name, None)) for name in LOADER_PARTS)
    elif hasattr(obj, "__dict__") and not isinstance(obj, _OPAQUE):
        yield from ((k, v) for k, v in vars(obj).items() if not k.startswith("__"))


def _walk(obj: Any, path: str, found: dict[str, Any], seen: set[int], depth: int = 0) -> None:
    """Collect, by attribute path, every Randomizable's ``R`` and every ``torch.Generator`` under ``obj``."""
    if isinstance(obj, _LEAVES) or id(obj) in seen or depth > _MAX_DEPTH:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Generator):
        found[path] = obj
        return
    stream = getattr(obj, "R", None) if isinstance(obj, Randomizable) else None
    # one stream may be shared (the class default of never-seeded transforms): restored once
    if isinstance(stream, np.random.RandomState) and id(stream) not in seen:
        seen.add(id(stream))
        found[f"{path}.R"] = stream
    for key, child in _children(obj):
        _walk(child, f"{path}.{key}", found, seen, depth + 1)


class RandomState:
    """The random state of a training run's engines and of the process, with ``state_dict`` /
    ``load_state_dict`` for MONAI's CheckpointSaver and CheckpointLoader (see the module's docstring).

    Args:
        engines: the trainer, and any engine it drives whose data loaders may be random (the evaluator).
    """

    def __init__(self, engines: Sequence[Any]) -> None:
        self.engines = list(engines)

    def _streams(self) -> dict[str, Any]:
        """Transform ``R`` s and generators reachable from the engines' loaders, by path (found afresh
        each time: ``set_random_state`` replaces a transform's ``R``)."""
        found: dict[str, Any] = {}
        seen: set[int] = set()
        for i, engine in enumerate(self.engines):
            for name in ENGINE_LOADERS:
                loader = getattr(engine, name, None)
                if loader is not None:
                    _walk(loader, f"engines.{i}.{name}", found, seen)
        return found

    def _engine_states(self) -> dict[str, Any]:
        return {
            f"engines.{i}.{name}": getattr(engine, name)
            for i, engine in enumerate(self.engines)
            for name in ENGINE_STATES
            if hasattr(getattr(engine, name, None), "state_dict")
        }

    def state_dict(self) -> dict[str, Any]:
        streams: dict[str, Any] = {}
        for path, stream in self._streams().items():
            if isinstance(stream, torch.Generator):
                streams[path] = {"device": str(stream.device), "state": stream.get_state()}
            else:
                streams[path] = _numpy_state(stream)
        return {
            "rank": _rank(),
            "python": _python_state(),
            "numpy": _numpy_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "streams": streams,
            "engines": {path: obj.state_dict() for path, obj in self._engine_states().items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for path, obj in self._engine_states().items():
            if path in state["engines"]:
                obj.load_state_dict(state["engines"][path])
            else:
                logger.warning(f"the checkpoint has no random state for {path}: it starts afresh")
        if int(state["rank"]) != _rank():
            logger.info(f"rank {_rank()} keeps its own random streams (the checkpoint holds rank {state['rank']}'s)")
            return
        _set_python_state(state["python"])
        _set_numpy_state(state["numpy"])
        torch.set_rng_state(state["torch"].cpu())
        cuda = [s.cpu() for s in state["cuda"]]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        elif cuda or torch.cuda.is_available():
            logger.warning("the CUDA random state is not restored (the checkpoint comes from other devices)")
        streams = self._streams()
        for path in sorted(set(streams) ^ set(state["streams"])):
            logger.warning(f"random stream {path} is only in the {'run' if path in streams else 'checkpoint'}")
        for path, stream in streams.items():
            saved = state["streams"].get(path)
            if saved is None:
                continue
            if isinstance(stream, torch.Generator):
                if torch.device(saved["device"]).type != stream.device.type:
                    logger.warning(f"random stream {path} was on {saved['device']}, now {stream.device}: not restored")
                    continue
                stream.set_state(saved["state"].cpu())
            else:
                _set_numpy_state(saved, stream)


def built_apart(factory: Callable[..., T], seed: int, *args: Any, **kwargs: Any) -> T:
    """``factory(*args, **kwargs)`` with torch's CPU generator seeded by ``seed`` while it runs, and put back
    where it was afterwards (its initial seed too).

    For what a variant builds on top of the baseline (the auxiliary task heads): their initialisation must
    not move the process-wide stream, from which a MONAI DataLoader built later seeds its augmentations.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return factory(*args, **kwargs)
