"""Throughput measurements (``scripts/benchmark.py``): the baseline bundle's trainer against a minimal
hand-written loop (``bench``: images/s, data wait, other load), every joint bundle's step against the
baseline's (``stage1_table``), distillation epochs with cached and online soft targets (``distill_table``),
inference with torch eager vs TorchScript (``model.ts``) vs onnxruntime (``model.onnx``) (``inference_table``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.data.demo import make_demo_siim
from common.utils.io import file_sha256
from pipeline.paths import BUNDLES, portable_path

TRAIN_CONFIG = BUNDLES / "baseline" / "configs" / "train.json"


@dataclass
class BenchSetting:
    """What every measurement shares: the data, resolution, batch size, measured epochs, teacher count."""

    dataset_dir: Path
    image_size: int = 256
    batch_size: int = 8
    repeats: int = 4
    teachers: int = 5
    aux_batch_size: int | None = None  # joint bundles' auxiliary batch (None: the bundle's batch_size // 2)


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _own_jiffies() -> int:
    """CPU jiffies used by this process and its finished or running children (the loader workers)."""
    t = os.times()
    return int((t.user + t.system + t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK"))


@dataclass
class LoadMeter:
    """Busy cores used by other processes over an interval (0 = the machine was ours)."""

    busy: int = 0
    total: int = 0
    own: int = 0

    def start(self) -> LoadMeter:
        self.busy, self.total = _cpu_jiffies()
        self.own = _own_jiffies()
        return self

    def other_cores(self, worker_jiffies: int = 0) -> float:
        busy, total = _cpu_jiffies()
        own = _own_jiffies() - self.own + worker_jiffies
        interval = max(total - self.total, 1) / (os.cpu_count() or 1)
        return max(0.0, (busy - self.busy - own) / interval)


def _worker_jiffies() -> int:
    """CPU jiffies of live child processes (DataLoader workers are not reaped until the loader ends)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():  # ppid
            total += int(fields[11]) + int(fields[12])
    return total


class HandLoop:
    """The same network, loss, optimiser and precision (autocast, memory layout) in a bare loop over in-memory
    batches (compute ceiling)."""

    def __init__(self, parser, batch_size: int) -> None:
        self.precision = parser.get_parsed_content("precision")
        device = parser.get_parsed_content("device")
        self.network = self.precision.network(parser.get_parsed_content("network_def", lazy=False).to(device))
        self.loss_fn = parser.get_parsed_content("loss", lazy=False)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(),
            lr=parser.get_parsed_content("learning_rate"),
            weight_decay=parser.get_parsed_content("weight_decay"),
        )
        dataset = parser.get_parsed_content("validate#dataset")  # deterministic transforms, cached
        samples = [dataset[i % len(dataset)] for i in range(batch_size * 4)]
        self.images = self.precision.batch(torch.stack([torch.as_tensor(s["image"]) for s in samples]).to(device))
        self.labels = torch.stack([torch.as_tensor(s["label"]) for s in samples]).to(device)
        self.batch_size = batch_size
        self.network.train()

    def step(self, i: int) -> None:
        k = (i * self.batch_size) % (len(self.images) - self.batch_size + 1)
        x, y = self.images[k : k + self.batch_size], self.labels[k : k + self.batch_size]
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            logits = self.network(x)
        loss = self.loss_fn(logits.float(), y)
        loss.backward()
        self.optimizer.step()

    def timed_loader(self, loader: Any, iterations: int) -> float:
        """Seconds of ``iterations`` steps over ``loader``'s batches (the bundle's own DataLoader: loading and
        augmentation included), in a bare loop: what the engine adds is the difference to the bundle's epoch."""
        _sync()
        t0 = time.perf_counter()
        for i, batch in enumerate(loader):
            if i == iterations:
                break
            x = self.precision.batch(batch["image"].as_subclass(torch.Tensor).to(self.images.device))
            y = batch["label"].as_subclass(torch.Tensor).to(self.images.device)
            self.optimizer.zero_grad(set_to_none=True)
            with self.precision.autocast():
                logits = self.network(x)
            self.loss_fn(logits.float(), y).backward()
            self.optimizer.step()
        _sync()
        return time.perf_counter() - t0

    def timed(self, iterations: int) -> float:
        _sync()
        t0 = time.perf_counter()
        for i in range(iterations):
            self.step(i)
        _sync()
        return time.perf_counter() - t0


def _sync() -> None:
    """Wait for the GPU's queued work (timings of asynchronous CUDA kernels); nothing on a CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench(
    dataset_dir: Path, image_size: int, batch_size: int, workers: int, repeats: int, **overrides: Any
) -> dict[str, float]:
    """Bundle trainer epochs interleaved with hand-loop runs of the same length; medians over ``repeats``.

    Epoch 1 fills the cache and is not counted. After every bundle epoch the hand loop runs as many
    steps as the epoch had, so both see the same machine state. ``overrides``: bundle settings (e.g. the
    precision: ``amp``, ``amp_dtype``, ``channels_last``, ``compile``), which the hand loop shares.
    """
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    with tempfile.TemporaryDirectory() as root:
        workflow = ConfigWorkflow(
            config_file=str(TRAIN_CONFIG),
            workflow_type="train",
            bundle_root=root,
            dataset_dir=str(dataset_dir),
            image_size=image_size,
            batch_size=batch_size,
            num_workers=workers,
            epochs=repeats + 1,
            val_interval=10_000,
            **overrides,
        )
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        hand = HandLoop(workflow.parser, batch_size)
        hand.timed(3)  # warm-up
        epochs, waits, hands, loops, others = [], [], [], [], []
        state = {"wait": 0.0, "t0": 0.0, "batch": 0.0}
        meter = LoadMeter()

        def epoch_started(engine) -> None:
            _sync()
            state.update(wait=0.0, t0=time.perf_counter(), w0=_worker_jiffies())
            meter.start()

        def batch_started(engine) -> None:
            state["batch"] = time.perf_counter()

        def batch_completed(engine) -> None:
            state["wait"] += time.perf_counter() - state["batch"]

        def epoch_completed(engine) -> None:
            _sync()
            elapsed = time.perf_counter() - state["t0"]
            others.append(meter.other_cores(_worker_jiffies() - state["w0"]))
            if engine.state.epoch == 1:
                return
            epochs.append(elapsed)
            waits.append(state["wait"] / elapsed)
            hand_meter = LoadMeter().start()
            hands.append(hand.timed(engine.state.epoch_length))
            loops.append(hand.timed_loader(engine.data_loader, engine.state.epoch_length))
            others.append(hand_meter.other_cores())

        trainer.add_event_handler(Events.EPOCH_STARTED, epoch_started)
        trainer.add_event_handler(Events.GET_BATCH_STARTED, batch_started)
        trainer.add_event_handler(Events.GET_BATCH_COMPLETED, batch_completed)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, epoch_completed)
        trainer.run()
        n_images = len(trainer.data_loader.dataset)
        steps = len(trainer.data_loader)
    return {
        "bundle": n_images / statistics.median(epochs),
        "hand": steps * batch_size / statistics.median(hands),
        "loop": n_images / statistics.median(loops),
        "wait_share": statistics.median(waits),
        "other_cores": max(others[1:]),
    }


def timed_pretexts(model: Any, clock: dict[str, float]) -> None:
    """Wrap every task's ``pretext`` so the time spent generating pretexts adds up in ``clock``."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for task in getattr(model, "tasks", {}).values():
        original = task.pretext

        def timed(images, generator, _original=original, **labels):  # labels: tasks with label_keys (hssl)
            sync()
            t0 = time.perf_counter()
            out = _original(images, generator, **labels)
            sync()
            clock["pretext"] += time.perf_counter() - t0
            return out

        task.pretext = timed


def bench_step(
    bundle: str, dataset_dir: Path, image_size: int, batch_size: int, repeats: int, **overrides: Any
) -> dict[str, float]:
    """Median seconds per training step of a bundle's trainer (epoch 1, which fills the cache, not
    counted) and the share of that step spent generating pretexts."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    with tempfile.TemporaryDirectory() as root:
        workflow = ConfigWorkflow(
            config_file=str(BUNDLES / bundle / "configs" / "train.json"),
            workflow_type="train",
            bundle_root=root,
            dataset_dir=str(dataset_dir),
            image_size=image_size,
            batch_size=batch_size,
            num_workers=0,
            epochs=repeats + 1,
            val_interval=10_000,
            **overrides,
        )
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        clock = {"pretext": 0.0, "t0": 0.0}
        timed_pretexts(getattr(trainer.network, "module", trainer.network), clock)
        steps, shares = [], []

        def started(engine) -> None:
            clock.update(pretext=0.0, t0=time.perf_counter())

        def completed(engine) -> None:
            elapsed = time.perf_counter() - clock["t0"]
            if engine.state.epoch > 1:
                steps.append(elapsed / engine.state.epoch_length)
                shares.append(clock["pretext"] / elapsed)

        trainer.add_event_handler(Events.EPOCH_STARTED, started)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, completed)
        trainer.run()
    return {"step_s": statistics.median(steps), "pretext_share": statistics.median(shares)}


def _selection_of_random_teachers(root: Path, n: int) -> Path:
    """A teachers.json of ``n`` randomly initialised baseline U-Nets (cost, not quality, is measured)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    entries = []
    for i in range(n):
        torch.manual_seed(i)
        path = root / f"teacher{i}.pt"
        torch.save(ConfigParser(parser.get()).get_parsed_content("network_def").state_dict(), path)
        entries.append({"task": f"t{i}", "mode": "joint", "checkpoint": str(path), "sha256": file_sha256(path)})
    selection = root / "teachers.json"
    selection.write_text(json.dumps({"teachers": entries}))
    return selection


def bench_epoch(bundle: str, setting: BenchSetting, root: Path, **overrides: Any) -> float:
    """Median seconds of a training epoch (no validation) after one warm-up epoch that fills the caches."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(BUNDLES / bundle / "configs" / "train.json"),
        workflow_type="train",
        bundle_root=str(root / bundle),
        dataset_dir=str(setting.dataset_dir),
        image_size=setting.image_size,
        batch_size=setting.batch_size,
        num_workers=0,
        epochs=setting.repeats + 1,
        val_interval=10_000,
        cache_dir=str(root / "cache"),
        **overrides,
    )
    workflow.initialize()
    run = workflow.parser["run"]
    for i, step in enumerate(run):  # the bundle's own set-up steps (teacher check, soft targets), not training
        if "soft_targets" in step or "teachers" in step:
            workflow.parser.get_parsed_content(f"run#{i}")
    trainer = workflow.parser.get_parsed_content("train#trainer")
    times, clock = [], {}
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: clock.update(t0=time.perf_counter()))

    def completed(engine) -> None:
        if engine.state.epoch > 1:
            times.append(time.perf_counter() - clock["t0"])

    trainer.add_event_handler(Events.EPOCH_COMPLETED, completed)
    trainer.run()
    return statistics.median(times)


def distill_table(setting: BenchSetting) -> None:
    """Distillation epoch with cached soft targets vs online teachers vs a baseline epoch (same images)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        selection = _selection_of_random_teachers(root, setting.teachers)
        # every training image labelled: the three epochs then cover exactly the same images
        common = {"labelled_fraction": 1.0}
        base = bench_epoch("baseline", setting, root, **common)
        cached = bench_epoch("distill", setting, root, teachers_file=str(selection), soft_targets="cached", **common)
        online = bench_epoch("distill", setting, root, teachers_file=str(selection), soft_targets="online", **common)
    size = f"{setting.image_size}x{setting.image_size}"
    print(f"\ndistillation epoch, {setting.teachers} teachers, {size}, batch {setting.batch_size}, all images labelled")
    print(f"{'epoch':<22} {'s':>7} {'vs baseline':>11}")
    for name, value in (("baseline", base), ("distill, cached", cached), ("distill, online", online)):
        print(f"{name:<22} {value:>7.1f} {value / base:>10.2f}x")
    print("target: cached distillation epoch <= 1.1x the baseline epoch")


def stage1_table(setting: BenchSetting) -> None:
    """Step time of every joint bundle relative to the baseline's step (target <= 1.6x)."""
    bundles = ["baseline", *sorted(p.name for p in BUNDLES.iterdir() if p.name.endswith("_joint"))]
    size = f"{setting.image_size}x{setting.image_size}"
    aux = setting.aux_batch_size or f"{setting.batch_size // 2} (batch_size // 2)"
    print(f"\nstep time, {size}, batch {setting.batch_size}, aux batch {aux}, bundle defaults otherwise")
    print(f"{'bundle':<18} {'ms/step':>8} {'vs baseline':>11} {'pretext share':>13}")
    base = None
    for bundle in bundles:
        extra = {"aux_batch_size": setting.aux_batch_size} if setting.aux_batch_size and bundle != "baseline" else {}
        r = bench_step(bundle, setting.dataset_dir, setting.image_size, setting.batch_size, setting.repeats, **extra)
        base = base or r["step_s"]
        print(f"{bundle:<18} {r['step_s'] * 1000:>8.0f} {r['step_s'] / base:>10.2f}x {r['pretext_share']:>13.1%}")
    print("target: joint step <= 1.25x the baseline step, multitask_joint <= 1.8x")


INFERENCE_IMAGES = 8


def _speed_bundle(root: Path) -> Path:
    """The baseline's configs with seeded random weights in ``root/baseline`` (speed, not quality, is measured)."""
    from common.deploy.onnx_export import bundle_parser

    bundle = root / "baseline"
    shutil.copytree(BUNDLES / "baseline" / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(bundle_parser(bundle).get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


def _exported(bundle: Path) -> tuple[torch.nn.Module, torch.nn.Module, Path]:
    """The bundle's network in torch eager, as TorchScript from ``ckpt_export`` and the ``model.onnx`` path: the
    files ``scripts/export_bundle.py --onnx`` ships."""
    from common.deploy.onnx_export import torch_network, write_onnx
    from common.deploy.zoo import export_torchscript

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    exporters = logging.getLogger("monai.bundle.scripts")  # their input summaries would bury the table
    level = exporters.level
    exporters.setLevel(logging.WARNING)
    try:
        scripted = torch.jit.load(str(export_torchscript(bundle, meta))).eval()
        onnx_file = write_onnx(bundle, bundle / "models" / "model.onnx")
    finally:
        exporters.setLevel(level)
    return torch_network(bundle), scripted, onnx_file


def _inference_images(dataset_dir: Path, bundle: Path, size: int) -> list[torch.Tensor]:
    """The first ``INFERENCE_IMAGES`` images of ``dataset_dir`` through the bundle's preprocessing at ``size``."""
    from common.data.imaging import list_images
    from common.deploy.onnx_export import bundle_parser

    preprocessing = bundle_parser(bundle, image_size=size).get_parsed_content("preprocessing")
    return [preprocessing(item)["image"].as_tensor()[None] for item in list_images(dataset_dir)[:INFERENCE_IMAGES]]


def time_inference(runtimes: dict[str, Any], images: list[torch.Tensor], repeats: int) -> dict[str, float]:
    """Median seconds per image of each runtime, batch 1; two warm-up images each, then ``repeats`` passes over
    ``images`` with the runtimes interleaved per pass (each sees the same machine state)."""
    passes: dict[str, list[float]] = {name: [] for name in runtimes}
    with torch.inference_mode():
        for network in runtimes.values():
            for x in images[:2]:
                network(x)
        for _ in range(repeats):
            for name, network in runtimes.items():
                t0 = time.perf_counter()
                for x in images:
                    network(x)
                passes[name].append((time.perf_counter() - t0) / len(images))
    return {name: statistics.median(times) for name, times in passes.items()}


def inference_table(setting: BenchSetting) -> None:
    """Inference speed of torch eager vs TorchScript vs onnxruntime (CPU provider), batch 1 as
    ``configs/inference.json``, at ``setting.image_size`` and the installed baseline model's image size, on the
    same images, with 1 thread and with torch's default thread count (the same count for all three)."""
    from common.deploy.onnx_runtime import OnnxNetwork
    from common.utils.metrics import trained_setting

    trained = int(trained_setting(BUNDLES / "baseline" / "models" / "model.pt", "image_size", 256))
    default_threads = torch.get_num_threads()
    shown = portable_path(setting.dataset_dir)
    print(f"\ninference, batch 1 (configs/inference.json), {INFERENCE_IMAGES} images of {shown},")
    print(f"median of {setting.repeats} passes after warm-up; threads: the same for torch and onnxruntime")
    print(f"{'threads':>7} {'size':>5} {'runtime':<24} {'ms/image':>8} {'img/s':>7} {'vs eager':>8} {'other load':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = _speed_bundle(Path(tmp))
        eager, scripted, onnx_file = _exported(bundle)
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            onnx = OnnxNetwork(onnx_file, threads=threads)
            runtimes = {"torch eager": eager, "TorchScript (model.ts)": scripted, "onnxruntime CPU": onnx}
            for size in sorted({setting.image_size, trained}):
                images = _inference_images(setting.dataset_dir, bundle, size)
                meter = LoadMeter().start()
                seconds = time_inference(runtimes, images, setting.repeats)
                other = meter.other_cores()
                flag = "  (busy machine: repeat)" if other > 0.2 else ""
                for name, s in seconds.items():
                    row = f"{threads:>7} {size:>5} {name:<24} {s * 1000:>8.1f} {1 / s:>7.1f}"
                    print(f"{row} {seconds['torch eager'] / s:>7.2f}x {other:>9.2f}c{flag}")
    torch.set_num_threads(default_threads)
    print(f"(size {trained}: the installed baseline model's training size; 'other load' = cores used by others)")


def run_benchmark(
    dataset_dir: Path,
    image_size: int = 256,
    batch_size: int = 8,
    workers: Sequence[int] = (0, 1, 2),
    repeats: int = 4,
    stage1: bool = False,
    distill: bool = False,
    teachers: int = 5,
    only: str | None = None,
    aux_batch_size: int | None = None,
) -> int:
    """Measure the trainer against the hand loop per DataLoader worker count (``only``: just the ``stage1``,
    ``distill`` or ``inference`` table), then the optional tables; print them. Generates the demo data when
    missing."""
    setting = BenchSetting(Path(dataset_dir), image_size, batch_size, repeats, teachers, aux_batch_size)
    if not (setting.dataset_dir / "train-rle.csv").is_file():
        print(f"{setting.dataset_dir} missing: generating the demo data there")
        make_demo_siim(setting.dataset_dir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    if only:
        from pipeline.inference_bench import loop_table
        from pipeline.precision_bench import precision_table

        tables = {"stage1": stage1_table, "distill": distill_table, "inference": inference_table}
        {**tables, "precision": precision_table, "inference-loop": loop_table}[only](setting)
        return 0
    size = f"{setting.image_size}x{setting.image_size}"
    print(f"baseline trainer, {size}, batch {setting.batch_size}, data {setting.dataset_dir}")
    header = (
        f"{'workers':>7} {'bundle img/s':>12} {'raw loop img/s':>14} {'ratio':>6} "
        f"{'in-memory img/s':>15} {'ratio':>6} {'data wait':>9} {'other load':>10}"
    )
    print(header)
    for n in workers:
        r = bench(setting.dataset_dir, setting.image_size, setting.batch_size, n, setting.repeats)
        flag = "  (busy machine: repeat)" if r["other_cores"] > 0.2 else ""
        print(
            f"{n:>7} {r['bundle']:>12.1f} {r['loop']:>14.1f} {r['bundle'] / r['loop']:>6.2f} "
            f"{r['hand']:>15.1f} {r['bundle'] / r['hand']:>6.2f} {r['wait_share']:>9.1%} "
            f"{r['other_cores']:>9.2f}c{flag}"
        )
    print(
        "raw loop: the bundle's DataLoader (loading, augmentation) in a bare loop, same precision; in-memory: no data"
    )
    print(
        "targets: ratio to the raw loop >= 0.95, data wait <= 5% (epoch 2, cache warm); 'other load': other processes"
    )
    if stage1:
        stage1_table(setting)
    if distill:
        distill_table(setting)
    return 0
