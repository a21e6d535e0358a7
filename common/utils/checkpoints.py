"""Loading a checkpoint file: ``torch.load(..., weights_only=True)`` with one error that names the file.

Every load of a ``.pt`` checkpoint in ``common`` and ``pipeline`` goes through ``load_checkpoint``, so a
truncated, overwritten or foreign file is reported as ``<path>: unreadable or corrupt checkpoint (<reason>)``
instead of a stream-reader traceback that never names it. ``require_loadable`` is the same check for a
config expression (before MONAI's ``CheckpointLoader`` loads the file): it stops the bundle with the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint that does not exist or cannot be loaded; the message names the file and says why."""


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The dict saved in ``path`` (tensors and plain containers only: ``weights_only=True``).

    Raises ``CheckpointError`` naming ``path`` when it is missing, unreadable, corrupt (truncated, not a
    torch file) or holds code or something other than a dict.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    try:
        state = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated zip, a foreign file, a pickle that runs code, an I/O error
        raise CheckpointError(f"{path}: unreadable or corrupt checkpoint ({_reason(e)})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: unreadable or corrupt checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be loaded (``load_checkpoint``'s message), or None when it loads."""
    try:
        load_checkpoint(path)
    except CheckpointError as e:
        return str(e)
    return None


def require_loadable(path: str | Path) -> str:
    """``path`` (as a string) when it loads; otherwise stop with ``error: <path>: ...`` and no traceback.

    For configs, e.g. ``"load_path": "$common.utils.checkpoints.require_loadable(@ckpt_file)"``.
    """
    problem = checkpoint_problem(path)
    if problem:
        raise SystemExit(f"error: {problem}")
    return str(path)
