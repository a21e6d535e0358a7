#!/usr/bin/env python
"""The whole two-stage protocol for one dataset, for one or several seeds, resumable.

Per seed: a seeded datalist (split and labelled subset), then the baseline, the ten stage-1 variants
and ``multitask_joint`` (independent: run side by side when the hardware allows), teacher selection,
distillation, then every model and the plain teacher ensemble evaluated on the held-out test split.
Everything is written under ``--out`` (bundles stay untouched: their ``ckpt_dir``/``log_dir``/
``output_dir`` are overridden), ending with ``report.md``, figures and ``results.json``.

    python scripts/run_pipeline.py --dataset-dir demo_data/siim --scale demo --out runs/demo
    python scripts/run_pipeline.py --dataset-dir /data/siim --labelled-fraction 0.1 --seeds 0 1 2 --out runs/siim10

Resuming: a training step is skipped when its ``metrics.json`` says ``complete`` and records the same
fingerprint (bundle configs + overrides + datalist content; for the student also the teachers'
sha256); an interrupted step with a matching fingerprint and a ``checkpoint_epoch=N.pt`` continues
with ``--resume true``; an evaluation is skipped when its model file is unchanged. Code changes are
not part of the fingerprint: pass ``--force`` after changing ``common``.

Hardware: ``--jobs N`` runs N independent bundles at once (default: one per GPU; without a GPU one
per CPU core, at most 6); each job sees one GPU (CUDA_VISIBLE_DEVICES) or its share of the CPU
threads. ``--nproc-per-bundle K`` instead trains each bundle with
``torchrun --nproc_per_node=K`` and its ``multi_gpu_train.json`` (one bundle at a time, all K GPUs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.data.datalist import DataValidationError, build_datalist, scan_dataset  # noqa: E402
from common.distill.teachers import file_sha256  # noqa: E402
from common.utils.io import atomic_write_json  # noqa: E402
from common.utils.metrics import read_metrics_file  # noqa: E402
from pipeline.report import write_report  # noqa: E402
from scripts.generate_bundles import ALL_TASKS  # noqa: E402

BUNDLES = REPO / "bundles"
# settings per scale; anything else comes from the bundle configs (or --set key=value). The demo scale
# fits the whole protocol into about 10 minutes on 2 CPU cores (measured: README); the student's epoch
# covers every training image (labelled and not), hence its fewer epochs.
SCALES: dict[str, dict[str, Any]] = {
    "demo": {
        "image_size": 64, "batch_size": 4, "learning_rate": 0.002, "epochs": 32, "pretrain_epochs": 2,
        "val_interval": 4,
    },
    "small": {"image_size": 128, "batch_size": 8, "epochs": 60, "pretrain_epochs": 10, "val_interval": 2},
    "full": {},
}  # fmt: skip
PER_BUNDLE: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {"distill": {"epochs": 30}},
    "small": {"distill": {"epochs": 20}},
}


@dataclass
class Step:
    """One bundle run: train (and its evaluation), with the overrides that make it this seed's run."""

    name: str
    bundle: Path
    out: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    extra_fingerprint: Any = None

    @property
    def metrics_file(self) -> Path:
        return self.out / "models" / "metrics.json"

    @property
    def model_file(self) -> Path:
        return self.out / "models" / "model.pt"


def _cli(overrides: dict[str, Any]) -> list[str]:
    args = []
    for key, value in overrides.items():
        # python-fire reads the values: Python literals for non-strings
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return args


def fingerprint(step: Step) -> str:
    """sha256 of the bundle's configs, the overrides and the extra facts (datalist, teachers)."""
    digest = hashlib.sha256()
    known: set[str] = set()
    for config in sorted((step.bundle / "configs").glob("*.json")):
        digest.update(config.name.encode() + config.read_bytes())
        known |= set(json.loads(config.read_text()))
    # an override of a key the bundle does not have changes nothing (e.g. HSSL's multidomain_datalist given
    # to every bundle with --set): it must not make a finished run look stale
    overrides = {k: v for k, v in step.overrides.items() if k != "resume" and k.split("#")[0] in known}
    digest.update(json.dumps([overrides, step.extra_fingerprint], sort_keys=True, default=str).encode())
    return "fp-" + digest.hexdigest()  # a prefix, so the CLI never reads it as a number


class Runner:
    """Runs bundle commands (as subprocesses), with logs under the run folder and device assignment."""

    def __init__(self, jobs: int, nproc: int, log_dir: Path, dry_run: bool = False) -> None:
        self.jobs, self.nproc, self.log_dir, self.dry_run = jobs, nproc, log_dir, dry_run
        self.gpus = _gpu_count()
        self._free_devices = list(range(self.gpus)) if self.gpus > 1 and jobs > 1 else []
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
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{log_name}.log"
        if self.dry_run:
            print("  " + " ".join(cmd))
            return
        with self._lock:
            device = self._free_devices.pop(0) if self._free_devices else None
        try:
            with open(log, "w") as f:
                proc = subprocess.run(cmd, cwd=REPO, env=self._env(device), stdout=f, stderr=subprocess.STDOUT)
        finally:
            if device is not None:
                with self._lock:
                    self._free_devices.append(device)
        if proc.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
            raise RuntimeError(f"{log_name} failed (exit {proc.returncode}); log: {log}\n{tail}")


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


def train_step(runner: Runner, step: Step, force: bool) -> str:
    """Train one bundle unless its outputs are current; return what happened."""
    current = fingerprint(step)
    metrics = read_metrics_file(step.metrics_file)
    recorded = (metrics.get("config") or {}).get("pipeline_fingerprint")
    status = (metrics.get("training") or {}).get("status")
    if not force and recorded == current and status == "complete" and step.model_file.is_file():
        return "current"
    checkpoints = list((step.out / "models").glob("*checkpoint_epoch=*.pt"))  # either phase
    resume = not force and recorded == current and bool(checkpoints)
    if not resume and step.metrics_file.exists():
        for old in (step.out / "models").glob("*"):  # another config or data: start clean
            old.unlink()
    overrides = {**step.overrides, "pipeline_fingerprint": current, "resume": resume}
    runner.bundle(
        [step.bundle / "configs" / "train.json"], overrides, f"{step.out.parent.name}-{step.name}-train", True
    )
    return "resumed" if resume else "trained"


def evaluate_step(runner: Runner, step: Step, ensemble: bool = False) -> str:
    """Evaluate the step's model (or the teacher ensemble) on the test split unless already done."""
    section = "ensemble_test" if ensemble else "test"
    if ensemble:  # the teachers' checkpoints, not the selection file (re-written with a new date each run)
        teachers = json.loads(Path(step.overrides["teachers_file"]).read_text())["teachers"]
        stamp = hashlib.sha256(json.dumps([t["sha256"] for t in teachers]).encode()).hexdigest()
    else:
        stamp = file_sha256(step.model_file)
    done = read_metrics_file(step.metrics_file).get(section) or {}
    if done.get("source_sha256") == stamp:
        return "current"
    configs = [step.bundle / "configs" / c for c in ("train.json", "evaluate.json")]
    if ensemble:
        configs.append(step.bundle / "configs" / "evaluate_ensemble.json")
    runner.bundle(configs, {**step.overrides, "eval_split": "test"}, f"{step.out.parent.name}-{step.name}-{section}")
    metrics = read_metrics_file(step.metrics_file)
    metrics[section]["source_sha256"] = stamp
    atomic_write_json(step.metrics_file, metrics)
    return "evaluated"


def stage1_names(tasks: list[str], skip: list[str]) -> list[str]:
    """baseline, <task>_joint/<task>_pretrain per task, multitask_joint; minus ``skip``."""
    names = ["baseline", *[f"{t}_{m}" for t in tasks for m in ("joint", "pretrain")], "multitask_joint"]
    return [n for n in names if n not in skip]


def seed_datalist(dataset_dir: Path, fraction: float, seed: int, skip_bad: bool, datalist_file: Path) -> str:
    """Write the seed's verified datalist once (split and labelled subset); return its sha256."""
    if not datalist_file.is_file():
        scan = scan_dataset(dataset_dir)
        datalist = build_datalist(scan, fraction, seed, skip_bad=skip_bad, workers=os.cpu_count() or 1)
        atomic_write_json(datalist_file, datalist)
    return file_sha256(datalist_file)


def seed_overrides(args: argparse.Namespace, datalist_file: Path, fraction: float, seed: int) -> dict[str, Any]:
    """Bundle overrides every run of one seed shares: data, split, seeds, the shared cache, scale, --set."""
    return {
        "dataset_dir": str(args.dataset_dir),
        "datalist_file": str(datalist_file),
        "labelled_fraction": fraction,
        "split_seed": seed,
        "seed": seed,
        "cache_dir": str(args.out / "cache"),
        **SCALES[args.scale],
        **args.set,
    }


def output_overrides(out: Path) -> dict[str, str]:
    """Where one run writes its models, logs and evaluation outputs (never inside the bundle)."""
    return {"ckpt_dir": str(out / "models"), "log_dir": str(out / "logs"), "output_dir": str(out / "eval")}


def run_seed(args: argparse.Namespace, seed: int, runner: Runner) -> dict[str, Any]:
    """The protocol for one seed; returns what the report needs."""
    seed_dir = args.out / f"seed{seed}"
    datalist_file = seed_dir / "datalist.json"
    datalist_sha = seed_datalist(args.dataset_dir, args.labelled_fraction, seed, args.skip_bad, datalist_file)
    common_overrides = seed_overrides(args, datalist_file, args.labelled_fraction, seed)

    def step(name: str, extra: Any = None) -> Step:
        out = seed_dir / name
        overrides = {**common_overrides, **output_overrides(out)}
        if not name.endswith("_pretrain"):
            overrides.pop("pretrain_epochs", None)
        overrides.update(PER_BUNDLE.get(args.scale, {}).get(name, {}))
        overrides.update(args.set)  # the user's --set wins over every preset
        return Step(name, BUNDLES / name, out, overrides, extra or {"datalist": datalist_sha})

    names = stage1_names(args.tasks, args.skip)
    steps = {n: step(n) for n in names}
    print(f"[seed {seed}] stage 1: {', '.join(names)} ({runner.jobs} at a time)")
    jobs = 1 if runner.nproc > 1 else runner.jobs
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(train_step, runner, s, args.force): n for n, s in steps.items()}
        failures = []
        for future in concurrent.futures.as_completed(futures):
            name = futures[future]
            try:
                print(f"[seed {seed}]   {name}: {future.result()}")
            except RuntimeError as e:
                failures.append(str(e))
                print(f"[seed {seed}]   {name}: FAILED", file=sys.stderr)
        if failures:
            raise RuntimeError("\n".join(failures))

    selection_file = seed_dir / "teachers.json"
    select_args = [
        sys.executable, str(REPO / "scripts" / "select_teachers.py"), "--bundles-dir", str(seed_dir),
        "--tasks", *args.tasks, "--out", str(selection_file),
    ]  # fmt: skip
    if any(n.endswith(("_joint", "_pretrain")) and n != "multitask_joint" for n in args.skip):
        select_args.append("--allow-missing")  # a variant left out on purpose: its task takes the other mode
    if not args.dry_run:
        subprocess.run(select_args, check=True, cwd=REPO)
    teachers = json.loads(selection_file.read_text())["teachers"] if selection_file.is_file() else []
    distill = step("distill", {"datalist": datalist_sha, "teachers": [t["sha256"] for t in teachers]})
    distill.overrides["teachers_file"] = str(selection_file)
    print(f"[seed {seed}] stage 2: distill: {train_step(runner, distill, args.force)}")

    print(f"[seed {seed}] test evaluation")
    evaluations = [(s, False) for s in [*steps.values(), distill]] + [(distill, True)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for (s, ens), result in zip(
            evaluations, pool.map(lambda a: evaluate_step(runner, *a), evaluations), strict=True
        ):
            print(f"[seed {seed}]   {s.name}{' ensemble' if ens else ''}: {result}")
    return {
        "seed": seed,
        "dir": str(seed_dir),
        "models": {n: str(s.out) for n, s in {**steps, "distill": distill}.items()},
        "teachers": teachers,
    }


def _parse_set(values: list[str]) -> dict[str, Any]:
    out = {}
    for item in values:
        key, _, raw = item.partition("=")
        if not key or not _:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the protocol for every seed, then write the report; print the results table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", type=Path, default=REPO / "demo_data" / "siim")
    parser.add_argument("--labelled-fraction", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "pipeline")
    parser.add_argument("--scale", choices=sorted(SCALES), default="full", help="epochs/resolution preset")
    parser.add_argument("--tasks", nargs="+", default=list(ALL_TASKS), choices=list(ALL_TASKS))
    parser.add_argument("--skip", nargs="*", default=[], help="bundle names to leave out (e.g. multitask_joint)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra bundle overrides (JSON values)"
    )
    parser.add_argument("--jobs", type=int, default=None, help="bundles trained at once (default: see above)")
    parser.add_argument("--nproc-per-bundle", type=int, default=1, help="torchrun processes per bundle")
    parser.add_argument("--skip-bad", action="store_true", help="skip (and list) unreadable images and bad rows")
    parser.add_argument("--force", action="store_true", help="retrain and re-evaluate everything")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--publish", type=Path, help="also write the summary here (scripts/results/<name>.json)")
    parser.add_argument("--label", help="the published run's name in the bundle READMEs (default: --out's name)")
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen, also in a log file
    args.set = _parse_set(args.set)
    args.out = args.out.resolve()
    args.dataset_dir = args.dataset_dir.resolve()
    if not args.dataset_dir.is_dir():
        raise SystemExit(f"error: dataset folder {args.dataset_dir} does not exist (make demo-data writes the demo)")
    runner = Runner(args.jobs or default_jobs(), args.nproc_per_bundle, args.out / "logs", args.dry_run)
    start = time.time()
    try:
        seeds = [run_seed(args, seed, runner) for seed in args.seeds]
    except DataValidationError as e:
        raise SystemExit(f"error: {e}") from None
    if args.dry_run:
        return 0
    settings = {
        "dataset_dir": str(args.dataset_dir),
        "labelled_fraction": args.labelled_fraction,
        "scale": args.scale,
        "overrides": {**SCALES[args.scale], **args.set},
        "tasks": args.tasks,
        "wall_time_s": round(time.time() - start, 1),
    }
    table = write_report(args.out, seeds, settings)
    if args.publish:  # what the bundle READMEs show (scripts/generate_bundles.py reads scripts/results/)
        results = json.loads((args.out / "results.json").read_text())
        label = args.label or args.out.name
        command = "python scripts/run_pipeline.py " + " ".join(argv if argv is not None else sys.argv[1:])
        published = {"kind": "pipeline", "label": label, "command": command, **results}
        atomic_write_json(args.publish, {k: v for k, v in published.items() if k != "per_seed"})
    print(table)
    print(f"report: {args.out / 'report.md'}  results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
