"""The whole inference bundle against a raw torch loop on the same files (``scripts/benchmark.py --only
inference-loop``): images/s of each, and where the raw loop's time goes.

Bundle: ``configs/inference.json`` run by MONAI's ``ConfigWorkflow`` (``LoadXrayd``, ``Resized``, the network
under the bundle's precision, the post-processing, ``Invertd`` back to the original size, ``SaveMaskd``'s
PNG), timed from ``run()`` to its end. Raw loop: the same decoder (``common.data.imaging.read_image``),
``torch.nn.functional.interpolate`` (area) to the network's size, the network under the same ``Precision``,
sigmoid + threshold + the minimum-area rule, nearest-neighbour back to the original size, PIL's PNG writer;
each stage timed. On the demo's synthetic 512 px DICOMs and on full-size 1024 x 1024 SIIM-ACR DICOMs when
``../shared/data`` has them. Seeded random weights (speed, not quality).
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.data.imaging import list_images, read_image, stem
from pipeline.benchmark import BenchSetting, LoadMeter, _speed_bundle
from pipeline.paths import REPO, portable_path

STAGES = ("decode", "resize", "network", "postprocess", "write")
REAL_SIIM = REPO.parent / "shared" / "data" / "siim_real"


def _subset(images: list[dict[str, str]], n: int, folder: Path) -> Path:
    """The first ``n`` images copied into ``folder`` (both runs read exactly these files)."""
    folder.mkdir(parents=True)
    for item in images[:n]:
        shutil.copy(item["image"], folder / Path(item["image"]).name)
    return folder


def bundle_seconds(bundle: Path, images: Path, out: Path, size: int) -> float:
    """Wall seconds of the bundle's ``inference.json`` over ``images`` (set-up excluded)."""
    from monai.bundle import ConfigWorkflow

    quiet = logging.getLogger("monai.bundle")
    level, quiet.level = quiet.level, logging.WARNING
    try:
        workflow = ConfigWorkflow(str(bundle / "configs" / "inference.json"), workflow_type="infer",
                                  bundle_root=str(bundle), input_dir=str(images), output_dir=str(out),
                                  image_size=size)  # fmt: skip
        workflow.initialize()
        workflow.parser.get_parsed_content("evaluator")  # built (weights loaded at its start) before the clock
        t0 = time.perf_counter()
        workflow.run()
        return time.perf_counter() - t0
    finally:
        quiet.setLevel(level)


def raw_loop(bundle: Path, images: Path, out: Path, size: int) -> dict[str, float]:
    """Seconds per stage of the raw loop over ``images`` (see the module)."""
    from common.deploy.onnx_export import bundle_parser, torch_network

    parser = bundle_parser(bundle)
    precision = parser.get_parsed_content("precision")
    network = precision.network(torch_network(bundle))
    threshold, min_area = (parser.get_parsed_content(k) for k in ("pred_threshold", "min_pred_area_fraction"))
    clock = dict.fromkeys(STAGES, 0.0)
    out.mkdir(parents=True, exist_ok=True)

    def lap(stage: str, t0: float) -> float:
        now = time.perf_counter()
        clock[stage] += now - t0
        return now

    with torch.inference_mode():
        for item in list_images(images):
            t = time.perf_counter()
            pixels, _ = read_image(item["image"])
            t = lap("decode", t)
            original = pixels.shape[-2:]
            x = F.interpolate(torch.from_numpy(np.ascontiguousarray(pixels, np.float32))[None, None],
                              size=(size, size), mode="area")  # fmt: skip
            t = lap("resize", t)
            with precision.autocast():
                logits = network(precision.batch(x))
            t = lap("network", t)
            mask = (torch.sigmoid(logits.float()) > threshold).to(torch.uint8)
            if mask.sum() < min_area * mask.numel():  # the bundle's EmptySmallMaskd
                mask.zero_()
            mask = F.interpolate(mask, size=tuple(original), mode="nearest")[0, 0].numpy()
            t = lap("postprocess", t)
            Image.fromarray(mask).save(out / f"{stem(item['image'])}_seg.png")  # SaveMaskd's name
            lap("write", t)
    return clock


def loop_table(setting: BenchSetting, n_images: int = 8) -> list[dict[str, Any]]:
    """Bundle vs raw loop at ``setting.image_size`` on the demo DICOMs and on real 1024 px SIIM DICOMs."""
    sources = {"demo (512 px DICOM)": setting.dataset_dir}
    real = REAL_SIIM / "labelled"
    if real.is_dir():
        sources["SIIM-ACR (1024 px DICOM)"] = real
    else:
        print(f"{portable_path(real)} absent: the full-size rows are skipped")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = _speed_bundle(root)
        for label, folder in sources.items():
            images = _subset(list_images(folder), n_images, root / f"in{len(rows)}")
            raw_loop(bundle, images, root / "warm", setting.image_size)  # warm-up: caches, allocator
            bundles, loops = [], []
            meter = LoadMeter().start()
            for r in range(setting.repeats):
                bundles.append(bundle_seconds(bundle, images, root / f"b{r}", setting.image_size))
                loops.append(raw_loop(bundle, images, root / f"l{r}", setting.image_size))
            loop_total = statistics.median(sum(c.values()) for c in loops)
            stages = {s: statistics.median(c[s] for c in loops) for s in STAGES}
            rows.append({
                "images": label, "size": setting.image_size, "n": n_images,
                "bundle_img_s": n_images / statistics.median(bundles), "loop_img_s": n_images / loop_total,
                "loop_ms": {s: 1000 * v / n_images for s, v in stages.items()},
                "other_cores": meter.other_cores(),
            })  # fmt: skip
    print(f"\ninference bundle vs raw torch loop, {n_images} files, network at {setting.image_size} px, batch 1,")
    print(f"median of {setting.repeats} runs; raw loop ms per image by stage")
    head = f"{'images':<26} {'bundle img/s':>12} {'loop img/s':>10} {'ratio':>6} "
    print(head + " ".join(f"{s:>11}" for s in STAGES) + f" {'other load':>10}")
    for r in rows:
        ratio = r["bundle_img_s"] / r["loop_img_s"]
        cells = " ".join(f"{r['loop_ms'][s]:>11.1f}" for s in STAGES)
        flag = "  (busy machine)" if r["other_cores"] > 0.2 else ""
        line = f"{r['images']:<26} {r['bundle_img_s']:>12.2f} {r['loop_img_s']:>10.2f} {ratio:>6.2f} {cells}"
        print(f"{line} {r['other_cores']:>9.2f}c{flag}")
    print("target: bundle >= 0.9x the raw loop")
    return rows
