"""Precision and memory layout side by side (``scripts/benchmark.py --only precision``): training images/s of the
baseline, a joint and the distillation bundle and inference images/s of the network, at each resolution, for
fp32, bf16 (fp16 too on CUDA), channels-last and ``torch.compile``, in one run on one machine.

Training: the bundle's own trainer (``common.training.base.Trainer``), a fixed epoch of ``samples_per_epoch``
draws, median epoch after one warm-up epoch (which also compiles). Inference: the network alone in eval
mode, batch 1 as ``configs/inference.json``, under the same ``Precision`` (see ``--only inference`` and the
inference-vs-loop table for the whole bundle). Every ratio is against fp32 of the same row in this run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common.training.precision import cpu_has_native_bf16, resolve_precision
from pipeline.benchmark import (
    BenchSetting,
    LoadMeter,
    _inference_images,
    _selection_of_random_teachers,
    _speed_bundle,
    _sync,
    bench_epoch,
)

#: the settings compared (bundle overrides); ``compile`` is measured on the baseline only (minutes of compiling)
PRECISIONS: dict[str, dict[str, Any]] = {
    "fp32": {"amp": False, "channels_last": False},
    "fp32+channels_last": {"amp": False, "channels_last": True},
    "bf16": {"amp": True, "amp_dtype": "bfloat16", "channels_last": False},
    "bf16+channels_last": {"amp": True, "amp_dtype": "bfloat16", "channels_last": True},
}
CUDA_PRECISIONS: dict[str, dict[str, Any]] = {
    "fp16": {"amp": True, "amp_dtype": "float16", "channels_last": False},
    "fp16+channels_last": {"amp": True, "amp_dtype": "float16", "channels_last": True},
}
COMPILED = {"auto, compiled": {"compile": True}}
TRAIN_BUNDLES = ("baseline", "genesis_joint", "distill")
SAMPLES_PER_EPOCH = 64


def _settings(bundle: str) -> dict[str, dict[str, Any]]:
    settings = dict(PRECISIONS)
    if torch.cuda.is_available():
        settings.update(CUDA_PRECISIONS)
    if bundle == "baseline":
        settings.update(COMPILED)
    return settings


def training_rows(setting: BenchSetting, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Training images/s of each bundle x size x precision (``samples_per_epoch`` draws per epoch)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        selection = _selection_of_random_teachers(root, setting.teachers)
        for bundle in TRAIN_BUNDLES:
            extra: dict[str, Any] = {"samples_per_epoch": SAMPLES_PER_EPOCH}
            if bundle == "distill":
                extra.update(teachers_file=str(selection), soft_targets="cached", labelled_fraction=1.0)
            for size in sizes:
                sized = BenchSetting(setting.dataset_dir, size, setting.batch_size, setting.repeats, setting.teachers)
                for name, overrides in _settings(bundle).items():
                    meter = LoadMeter().start()
                    try:
                        seconds = bench_epoch(bundle, sized, root / f"{size}", **extra, **overrides)
                    except Exception as e:  # a setting this machine cannot run: its row says why
                        rows.append({"bundle": bundle, "size": size, "precision": name, "error": str(e)[:200]})
                        continue
                    images = SAMPLES_PER_EPOCH / seconds
                    rows.append(
                        {
                            "bundle": bundle,
                            "size": size,
                            "precision": name,
                            "img_s": images,
                            "other_cores": meter.other_cores(),
                        }
                    )
    return rows


def _runtime(network: torch.nn.Module, overrides: dict[str, Any], device: torch.device) -> Any:
    """The network as the bundle's evaluator runs it under ``overrides``' precision (a callable on one image)."""
    precision = resolve_precision(
        device, overrides.get("amp", "auto"), overrides.get("amp_dtype", "auto"), overrides.get("channels_last", "auto")
    )
    net = precision.network(network)
    net = torch.compile(net) if overrides.get("compile") else net

    def run(x: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            return net(precision.batch(x.to(device))).float()

    return run


def inference_rows(setting: BenchSetting, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Network inference images/s (batch 1, eval mode) per size and precision, settings interleaved per pass."""
    from common.deploy.onnx_export import torch_network

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = _speed_bundle(Path(tmp))
        settings = _settings("baseline")
        runtimes = {name: _runtime(torch_network(bundle).to(device), o, device) for name, o in settings.items()}
        for size in sizes:
            images = _inference_images(setting.dataset_dir, bundle, size)
            passes: dict[str, list[float]] = {name: [] for name in runtimes}
            meter = LoadMeter().start()
            with torch.inference_mode():
                for run in runtimes.values():
                    for x in images[:2]:  # warm-up (compiles)
                        run(x)
                for _ in range(setting.repeats):
                    for name, run in runtimes.items():
                        _sync()
                        t0 = time.perf_counter()
                        for x in images:
                            run(x)
                        _sync()
                        passes[name].append((time.perf_counter() - t0) / len(images))
            other = meter.other_cores()
            for name, times in passes.items():
                s = statistics.median(times)
                rows.append({"size": size, "precision": name, "img_s": 1 / s, "ms": s * 1000, "other_cores": other})
    return rows


def _ratio_column(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    """``vs_fp32`` of every row: its images/s over the fp32 row with the same ``keys``."""
    base = {tuple(r[k] for k in keys): r["img_s"] for r in rows if r["precision"] == "fp32" and "img_s" in r}
    for r in rows:
        if "img_s" in r:
            r["vs_fp32"] = r["img_s"] / base[tuple(r[k] for k in keys)]


def precision_table(setting: BenchSetting, sizes: tuple[int, ...] = (128, 256)) -> dict[str, Any]:
    """Print (and return) the training and inference tables."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    auto = resolve_precision(device).name
    print(f"\nprecision, {device} (native bf16 on this CPU: {cpu_has_native_bf16()}; 'auto' resolves to {auto})")
    train = training_rows(setting, sizes)
    _ratio_column(train, ("bundle", "size"))
    print(f"training, batch {setting.batch_size}, {SAMPLES_PER_EPOCH} images per epoch, median of {setting.repeats}")
    print(f"{'bundle':<14} {'size':>4} {'precision':<20} {'img/s':>7} {'vs fp32':>7} {'other load':>10}")
    for r in train:
        if "error" in r:
            print(f"{r['bundle']:<14} {r['size']:>4} {r['precision']:<20} unavailable: {r['error']}")
            continue
        flag = "  (busy machine)" if r["other_cores"] > 0.2 else ""
        row = f"{r['bundle']:<14} {r['size']:>4} {r['precision']:<20} {r['img_s']:>7.1f} {r['vs_fp32']:>6.2f}x"
        print(f"{row} {r['other_cores']:>9.2f}c{flag}")
    infer = inference_rows(setting, sizes)
    _ratio_column(infer, ("size",))
    print(f"\ninference (network, batch 1, eval mode), median of {setting.repeats} passes")
    print(f"{'size':>4} {'precision':<20} {'ms/image':>8} {'img/s':>7} {'vs fp32':>7} {'other load':>10}")
    for r in infer:
        flag = "  (busy machine)" if r["other_cores"] > 0.2 else ""
        row = f"{r['size']:>4} {r['precision']:<20} {r['ms']:>8.1f} {r['img_s']:>7.1f} {r['vs_fp32']:>6.2f}x"
        print(f"{row} {r['other_cores']:>9.2f}c{flag}")
    print("target (CPU with native bf16): training >= 1.5x fp32 at 128 and 256 px")
    return {"device": device, "auto": auto, "training": train, "inference": infer}
