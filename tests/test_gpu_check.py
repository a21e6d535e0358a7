"""The prepared GPU check (``scripts/gpu_check.py``) on this machine: without CUDA every GPU item says so, the
code paths a CPU can run (bf16 autocast + channels-last through the bundle's trainer) run and pass, and the
record is one JSON; the raw inference loop of the benchmark writes the masks the bundle writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.benchmark import _speed_bundle
from pipeline.gpu_check import NO_CUDA, run_gpu_check
from pipeline.inference_bench import _subset, bundle_seconds, raw_loop

pytestmark = pytest.mark.filterwarnings("ignore:.*parsing config_file.*:UserWarning")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback of the check (a CUDA machine runs it all)")
def test_without_cuda_every_gpu_item_says_so_and_the_cpu_paths_pass(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = tmp_path / "gpu_check.json"
    record = run_gpu_check(out, ["baseline"], data)
    assert json.loads(out.read_text()) == record
    items = record["items"]
    assert items["amp/baseline/float16"] == {"skipped": NO_CUDA}
    for key in ("nccl/baseline", "nccl/rotation_joint", "benchmark/fp32", "benchmark/auto"):
        assert items[key] == {"skipped": NO_CUDA}
    bf16 = items["amp/baseline/bfloat16"]
    assert bf16["ok"] and bf16["finite_loss"] and bf16["checkpoint_loads"] and bf16["losses"]
    assert NO_CUDA in bf16["device"]
    assert record["summary"] == {"ok": 1, "failed": [], "skipped": 5}


def test_raw_inference_loop_writes_the_bundle_masks(tiny_siim: Path, tmp_path: Path) -> None:
    """The loop the inference benchmark compares with does the bundle's work: same files, same masks (fp32)."""
    bundle = _speed_bundle(tmp_path)
    cfg = bundle / "configs" / "inference.json"
    cfg.write_text(cfg.read_text().replace('"amp": "auto"', '"amp": false'))
    from common.data.imaging import list_images

    images = _subset(list_images(tiny_siim), 3, tmp_path / "in")
    assert bundle_seconds(bundle, images, tmp_path / "bundle", 64) > 0
    clock = raw_loop(bundle, images, tmp_path / "loop", 64)
    assert set(clock) == {"decode", "resize", "network", "postprocess", "write"} and all(v > 0 for v in clock.values())
    names = sorted(p.name for p in (tmp_path / "loop").glob("*.png"))
    assert len(names) == 3 and names == sorted(p.name for p in (tmp_path / "bundle").glob("*.png"))
    for name in names:
        a = np.asarray(Image.open(tmp_path / "loop" / name)) > 0
        b = np.asarray(Image.open(tmp_path / "bundle" / name)) > 0
        assert a.shape == b.shape and (a == b).mean() > 0.99  # area vs MONAI's resize at the mask's edge
