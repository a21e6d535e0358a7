"""Where a running bundle lives, and what config it runs with.

MONAI 1.6.1 exposes neither the config file's path nor the parsed config to the expressions
inside it (``bundle_root: "."`` is the current directory). So ``bundle_root()`` finds the
``ConfigWorkflow`` that is evaluating the config on the call stack and takes its
``config_root_path``; outside a workflow it falls back to ``--config_file`` on the command line.
Either way outputs land inside the bundle, whatever the current directory is.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from common.utils.checkpoints import require_loadable

REPO_ROOT = Path(__file__).resolve().parents[2]


def _workflow_on_stack() -> Any | None:
    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigWorkflow):
            return candidate
        frame = frame.f_back
    return None


def _config_files_from_argv() -> list[Path]:
    argv = sys.argv
    for i, arg in enumerate(argv):
        value = None
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value:
            value = value.strip()
            if value.startswith("["):
                import ast

                return [Path(v) for v in ast.literal_eval(value)]
            return [Path(v) for v in value.split(",")]
    return []


def _root_of(configs_dir: Path) -> Path:
    configs_dir = configs_dir.resolve()
    return configs_dir.parent if configs_dir.name == "configs" else configs_dir


def bundle_root() -> str:
    """Absolute path of the bundle whose config is being run (the folder holding ``configs/``)."""
    workflow = _workflow_on_stack()
    if workflow is not None:
        return str(_root_of(Path(workflow.config_root_path)))
    files = _config_files_from_argv()
    if files:
        return str(_root_of(files[0].parent))
    raise RuntimeError("cannot tell which bundle is running: pass --bundle_root <bundle folder>")


def running_config() -> dict[str, Any]:
    """The raw config (after command-line overrides) of the workflow on the stack; {} outside one."""
    workflow = _workflow_on_stack()
    if workflow is None:
        return {}
    return dict(workflow.parser.get() or {})


def built_item(key: str) -> Any:
    """The value of config item ``key`` if the workflow on the stack has already built it, else None (without
    building it: e.g. ``datalist``, which MONAI Label never builds because it supplies the loaders' data)."""
    workflow = _workflow_on_stack()
    if workflow is None:
        return None
    return workflow.parser.ref_resolver.resolved_content.get(key)


def running_settings(keys: list[str]) -> dict[str, Any]:
    """The parsed values of those ``keys`` that the workflow on the stack defines; {} outside one."""
    workflow = _workflow_on_stack()
    if workflow is None:
        return {}
    return {key: workflow.parser.get_parsed_content(key) for key in keys if key in workflow.parser}


def demo_data_dir(name: str = "siim") -> str:
    """Default ``dataset_dir``: the synthetic demo data that ``make demo-data`` writes in the repository."""
    return str(REPO_ROOT / "demo_data" / name)


def _checkpoints(ckpt_dir: str, prefix: str = "") -> list[Path]:
    """``<prefix>checkpoint_epoch=N.pt`` files in ``ckpt_dir``, lowest epoch first."""
    found = Path(ckpt_dir).glob(f"{prefix}checkpoint_epoch=*.pt")
    return sorted(found, key=lambda p: int(p.stem.split("=")[-1]))


def has_checkpoint(ckpt_dir: str, prefix: str = "") -> bool:
    """Whether ``ckpt_dir`` holds a resumable checkpoint (``<prefix>checkpoint_epoch=N.pt``)."""
    return bool(_checkpoints(ckpt_dir, prefix))


def latest_checkpoint(ckpt_dir: str, prefix: str = "") -> str:
    """The resumable checkpoint with the highest epoch in ``ckpt_dir`` (``<prefix>checkpoint_epoch=N.pt``);
    a corrupt one stops the run with one line naming it."""
    found = _checkpoints(ckpt_dir, prefix)
    if not found:
        raise FileNotFoundError(
            f"resume requested but {ckpt_dir} has no {prefix}checkpoint_epoch=*.pt: train without --resume"
        )
    return require_loadable(found[-1])


def require_resumable(ckpt_dir: str, prefixes: list[str]) -> None:
    """Fail clearly when ``--resume true`` finds none of the phases' checkpoints in ``ckpt_dir``."""
    if not any(has_checkpoint(ckpt_dir, p) for p in prefixes):
        names = " or ".join(f"{p}checkpoint_epoch=*.pt" for p in prefixes)
        raise FileNotFoundError(f"resume requested but {ckpt_dir} has no {names}: train without --resume")
