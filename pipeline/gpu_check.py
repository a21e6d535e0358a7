"""The prepared GPU check (``scripts/gpu_check.py``, ``make gpu-check``): what only a CUDA machine can show, in
one run of a few minutes, written to one JSON.

1. ``amp``: every bundle trains one short epoch (``train.json``; pre-training bundles one pre-training epoch
   first; the student on seeded random teachers) under ``--amp True`` with fp16 (GradScaler) and bf16; the
   loss must be finite and ``models/model.pt`` must load into the bundle's ``network_def``.
2. ``nccl``: ``torchrun --nproc_per_node=<GPUs>`` with ``multi_gpu_train.json`` (NCCL) for the baseline and one
   joint bundle; skipped with its reason on a machine with one GPU (NCCL needs one device per rank).
3. ``benchmark``: the baseline trainer against the hand loop (img/s, share of the step waiting for data) per
   precision, with the peak GPU memory.

Without CUDA every item that needs it is recorded as ``skipped: no CUDA: GPU checks skipped``, and the code
paths that also run on a CPU run there (bf16 autocast with channels-last, the same trainer iteration), so a
broken check is found before GPU time is spent on it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from common.data.demo import make_demo_siim
from common.utils.checkpoints import load_checkpoint
from common.utils.io import atomic_write_json
from pipeline.benchmark import _selection_of_random_teachers, bench
from pipeline.multidomain import write_demo_multidomain
from pipeline.paths import BUNDLES, REPO, portable_path

NO_CUDA = "no CUDA: GPU checks skipped"
#: one short epoch: small images, a fixed number of draws, validation at its end
SHORT_EPOCH = {
    "image_size": 64,
    "batch_size": 8,
    "samples_per_epoch": 32,
    "epochs": 1,
    "val_interval": 1,
    "num_workers": 2,
    "pretrain_epochs": 1,
}
DTYPES = ("float16", "bfloat16")
NCCL_BUNDLES = ("baseline", "rotation_joint")


def _bundles() -> list[str]:
    return sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "train.json").is_file())


def _cli(overrides: dict[str, Any]) -> list[str]:
    return [arg for k, v in overrides.items() for arg in (f"--{k}", str(v))]


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _overrides(bundle: str, root: Path, data: dict[str, Path], extra: dict[str, Any]) -> dict[str, Any]:
    """The short epoch for ``bundle`` writing under ``root/<bundle>``."""
    cfg = json.loads((BUNDLES / bundle / "configs" / "train.json").read_text())
    out = {"bundle_root": root / bundle, "dataset_dir": data["siim"], "cache_dir": root / "cache", **extra}
    out.update({k: v for k, v in SHORT_EPOCH.items() if k in cfg})
    if "multidomain_datalist" in cfg:
        out["multidomain_datalist"] = data["multidomain"] / "datalist.json"
    if "teachers_file" in cfg:
        out["teachers_file"] = _selection_of_random_teachers(root, 2)
    return out


def _finite_loss(metrics_file: Path) -> tuple[bool, dict[str, Any]]:
    """Whether every training loss (each validated epoch of ``history``) and pre-training loss that
    ``metrics.json`` recorded is finite, and those losses."""
    metrics = json.loads(metrics_file.read_text())
    losses = {
        f"pretraining/{key}": value
        for key, value in ((metrics.get("pretraining") or {}).get("metrics") or {}).items()
        if "loss" in key
    }
    for point in metrics.get("history") or []:
        losses.update({f"epoch {point['epoch']}/{k}": v for k, v in point.items() if "loss" in k})
    losses = {k: v for k, v in losses.items() if isinstance(v, (int, float))}
    return bool(losses) and all(math.isfinite(v) for v in losses.values()), losses


def _checkpoint_loads(bundle: str, model_file: Path) -> bool:
    """``model_file`` loads (strictly) into the bundle's ``network_def``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(load_checkpoint(model_file))
    return True


def amp_item(bundle: str, dtype: str, root: Path, data: dict[str, Path]) -> dict[str, Any]:
    """One short epoch of ``bundle`` under autocast with ``dtype``; finite loss and a loadable checkpoint."""
    extra = {"amp": True, "amp_dtype": dtype}
    overrides = _overrides(bundle, root / dtype, data, extra)
    config = BUNDLES / bundle / "configs" / "train.json"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config), *_cli(overrides)]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    item: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 1)}
    models = Path(overrides["bundle_root"]) / "models"
    if proc.returncode != 0:
        return {**item, "ok": False, "error": _tail(proc.stdout + proc.stderr)}
    finite, losses = _finite_loss(models / "metrics.json")
    loads = _checkpoint_loads(bundle, models / "model.pt")
    return {**item, "ok": finite and loads, "finite_loss": finite, "losses": losses, "checkpoint_loads": loads}


def nccl_item(bundle: str, root: Path, data: dict[str, Path], gpus: int) -> dict[str, Any]:
    """``torchrun --nproc_per_node=gpus`` with ``multi_gpu_train.json`` (NCCL) for one short epoch."""
    configs = [BUNDLES / bundle / "configs" / c for c in ("train.json", "multi_gpu_train.json")]
    overrides = _overrides(bundle, root / "nccl", data, {})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    command += ["-m", "monai.bundle", "run", "--config_file", json.dumps([str(c) for c in configs])]
    t0 = time.perf_counter()
    proc = subprocess.run([*command, *_cli(overrides)], capture_output=True, text=True, cwd=REPO)
    item: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 1), "ranks": gpus}
    if proc.returncode != 0:
        return {**item, "ok": False, "error": _tail(proc.stdout + proc.stderr)}
    finite, losses = _finite_loss(Path(overrides["bundle_root"]) / "models" / "metrics.json")
    return {**item, "ok": finite, "finite_loss": finite, "losses": losses}


def benchmark_item(dataset_dir: Path, image_size: int, precision: dict[str, Any]) -> dict[str, Any]:
    """The baseline trainer vs the hand loop under ``precision`` settings, with the peak GPU memory."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    r = bench(dataset_dir, image_size, 16, min(4, os.cpu_count() or 1), 3, **precision)
    if cuda:
        r["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return {"ok": True, **{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}}


def _guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``, or a failed item naming the exception (one broken check does not hide the others)."""
    try:
        return fn()
    except Exception as e:  # recorded in the JSON: one broken check does not stop the others
        return {"ok": False, "error": f"{name}: {type(e).__name__}: {e}"}


def run_gpu_check(out: Path, bundles: list[str] | None = None, data_root: Path | None = None) -> dict[str, Any]:
    """Every item (see the module), printed as it finishes and written to ``out``; returns the record."""
    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    record: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(gpus)],
        "items": {},
    }
    items = record["items"]

    def note(key: str, item: dict[str, Any]) -> None:
        items[key] = item
        state = "skipped" if "skipped" in item else ("ok" if item.get("ok") else "FAILED")
        print(f"{key:<40} {state:<8} {item.get('skipped') or item.get('error', '').splitlines()[-1:] or ''}")
        atomic_write_json(out, record)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_root = data_root or root / "data"
        data = {"siim": data_root / "siim", "multidomain": data_root / "multidomain"}
        if not (data["siim"] / "train-rle.csv").is_file():
            make_demo_siim(data["siim"])
        if not (data["multidomain"] / "datalist.json").is_file():
            write_demo_multidomain(data["multidomain"])
        for bundle in bundles or _bundles():
            for dtype in DTYPES:
                key = f"amp/{bundle}/{dtype}"
                if not cuda and dtype == "float16":
                    note(key, {"skipped": NO_CUDA})
                    continue
                item = _guarded(key, lambda b=bundle, d=dtype: amp_item(b, d, root, data))
                note(key, {**item, "device": "cuda" if cuda else f"cpu ({NO_CUDA}: bf16 on the CPU instead)"})
        for bundle in NCCL_BUNDLES:
            key = f"nccl/{bundle}"
            if not cuda:
                note(key, {"skipped": NO_CUDA})
            elif gpus < 2:
                note(key, {"skipped": f"{gpus} GPU: NCCL needs one device per rank, torchrun needs 2 or more"})
            else:
                note(key, _guarded(key, lambda b=bundle: nccl_item(b, root, data, gpus)))
        settings = {"fp32": {"amp": False, "channels_last": False}, "auto": {}}
        if cuda:
            settings.update(fp16={"amp": True, "amp_dtype": "float16"}, bf16={"amp": True, "amp_dtype": "bfloat16"})
        for name, precision in settings.items():
            key = f"benchmark/{name}"
            if not cuda:
                note(key, {"skipped": NO_CUDA})
                continue
            note(key, _guarded(key, lambda p=precision: benchmark_item(data["siim"], 256, p)))
    record["summary"] = {
        "ok": sum(1 for i in items.values() if i.get("ok")),
        "failed": sorted(k for k, i in items.items() if "skipped" not in i and not i.get("ok")),
        "skipped": sum(1 for i in items.values() if "skipped" in i),
    }
    atomic_write_json(out, record)
    print(f"written: {portable_path(out)}  ({json.dumps(record['summary'])})")
    return record
