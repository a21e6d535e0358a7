"""Running bundle commands: ``python -m monai.bundle run`` (or torchrun) per bundle, several at a time.

Hardware: ``jobs`` bundles at once (default: one per GPU; without a GPU one per CPU core, at most 6);
each job sees one GPU (CUDA_VISIBLE_DEVICES) or its share of the CPU threads. ``nproc > 1`` instead
trains each bundle with ``torchrun --nproc_per_node=nproc`` and its ``multi_gpu_train.json``. With
``tracking_dir`` every bundle command is tracked with MLflow in that run folder's store (``pipeline.tracking``).
Every command's wall and CPU time goes to ``logs/compute.jsonl`` (``pipeline.compute``).
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pipeline import compute
from pipeline.paths import REPO
from pipeline.tracking import bundle_arguments, prepare


def _cli(overrides: dict[str, Any]) -> list[str]:
    args = []
    for key, value in overrides.items():
        # python-fire reads the values: Python literals for non-strings
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return args


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no usable torch/CUDA: CPU
        return 0


def default_jobs() -> int:
    """One job per GPU when there are several (one GPU: 1); on CPU one single-threaded job per core, at most 6.

    Measured on 2 cores: two one-thread trainings side by side finish in the time one two-thread
    training takes (small 2D U-Nets use a second thread poorly), so CPU jobs run one per core.
    """
    gpus = _gpu_count()
    if gpus:
        return gpus
    return max(1, min(6, os.cpu_count() or 1))


def _run_measured(cmd: list[str], env: dict[str, str], log: IO[str]) -> tuple[int, float, float]:
    """Run ``cmd`` with its output in ``log``; return its exit code, wall seconds and CPU seconds (user +
    system of the process and the children it waited for: ``os.wait4``, which ``subprocess`` does not
    expose)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:  # interrupted: do not leave the bundle running (as subprocess.run does)
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return proc.returncode, time.perf_counter() - start, usage.ru_utime + usage.ru_stime


class StepError(RuntimeError):
    """A bundle run or a pipeline step failed; the message names it and says why (no traceback needed)."""


class Runner:
    """Runs bundle commands (as subprocesses), with logs under the run folder and device assignment.

    ``dry_run``: the steps only say what they would do (nothing is run or written); ``no_retrain``: a step
    that would replace a completed model stops the run instead (``pipeline.steps``); ``tracking_dir``: the run
    folder whose MLflow store tracks every bundle command, one MLflow run per command named as its log."""

    def __init__(
        self,
        jobs: int | None,
        nproc: int,
        log_dir: Path,
        dry_run: bool = False,
        no_retrain: bool = False,
        tracking_dir: Path | None = None,
    ) -> None:
        self.jobs, self.nproc, self.log_dir, self.dry_run = jobs or default_jobs(), nproc, log_dir, dry_run
        self.no_retrain, self.tracking_dir = no_retrain, tracking_dir
        if self.tracking_dir is not None and not dry_run:
            prepare(self.tracking_dir)  # the store and experiment, before bundles run side by side
        self.gpus = _gpu_count()
        self._free_devices = list(range(self.gpus)) if self.gpus > 1 and self.jobs > 1 else []
        self._lock = threading.Lock()

    def _env(self, device: int | None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONWARNINGS", None)
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(device)
        elif self.jobs > 1 and self.gpus == 0:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.jobs)))
        return env

    def bundle(self, configs: list[Path], overrides: dict[str, Any], log_name: str, distributed: bool = False) -> None:
        """``python -m monai.bundle run`` (or torchrun with the multi-GPU mixin); raise with the log on failure."""
        if distributed and self.nproc > 1:
            configs = [*configs, configs[0].parent / "multi_gpu_train.json"]
            launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={self.nproc}", "-m"]
        else:
            launcher = [sys.executable, "-m"]
        config_arg = str(configs[0]) if len(configs) == 1 else repr([str(c) for c in configs])
        cmd = [*launcher, "monai.bundle", "run", "--config_file", config_arg, *_cli(overrides)]
        if self.tracking_dir is not None:  # not an override: never part of a step's fingerprint
            cmd += bundle_arguments(self.tracking_dir, log_name, self.log_dir / f"{log_name}.config.json")
        if self.dry_run:  # (writes nothing, not even the log folder)
            print("  " + " ".join(cmd))
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{log_name}.log"
        with self._lock:
            device = self._free_devices.pop(0) if self._free_devices else None
        try:
            with open(log, "w") as f:
                returncode, wall_s, cpu_s = _run_measured(cmd, self._env(device), f)
        finally:
            if device is not None:
                with self._lock:
                    self._free_devices.append(device)
        with self._lock:  # what the command cost, failed or not (a resumed run adds its segments)
            datalist, fresh = str(overrides.get("datalist_file", "")), not overrides.get("resume", False)
            compute.record(self.log_dir, log_name, datalist, wall_s, cpu_s, fresh)
        if returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
            raise StepError(f"{log_name} failed (exit {returncode}); log: {log}\n{tail}")

    def run_all(self, work: dict[str, Callable[[], str]]) -> None:
        """Call every ``label -> function`` (``jobs`` at a time; one with torchrun), printing ``label: result``
        as each finishes; after all have finished, raise one ``StepError`` naming every failure."""
        failures = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=1 if self.nproc > 1 else self.jobs) as pool:
            futures = {pool.submit(fn): label for label, fn in work.items()}
            for future in concurrent.futures.as_completed(futures):
                try:
                    print(f"{futures[future]}: {future.result()}")
                except RuntimeError as e:
                    failures.append(str(e))
                    print(f"{futures[future]}: FAILED", file=sys.stderr)
        if failures:
            raise StepError("\n".join(failures))
