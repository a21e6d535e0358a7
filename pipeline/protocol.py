"""The whole two-stage protocol for one dataset, for one or several seeds, resumable.

Per seed: a seeded datalist (split and labelled subset), then the baseline, the stage-1 variants and
``multitask_joint`` (independent: run side by side when the hardware allows), teacher selection
(``common.distill.selection``), distillation, then every model and the plain teacher ensemble evaluated
on the held-out test split. Everything is written under the run folder (bundles stay untouched: their
``ckpt_dir``/``log_dir``/``output_dir`` are overridden), ending with ``report.md``, figures and
``results.json`` (``pipeline.report``). Resuming: ``pipeline.steps``; hardware: ``pipeline.runner``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from common.data.datalist import DataValidationError
from common.distill.selection import select_teachers
from common.ssl import list_tasks
from pipeline.install import InstallError, install_run
from pipeline.paths import portable_command, publish
from pipeline.report import write_report
from pipeline.runner import Runner
from pipeline.setting import RunSetting
from pipeline.steps import evaluate_step, train_step


def stage1_names(tasks: Sequence[str], skip: Sequence[str]) -> list[str]:
    """baseline, <task>_joint/<task>_pretrain per task, multitask_joint; minus ``skip``."""
    names = ["baseline", *[f"{t}_{m}" for t in tasks for m in ("joint", "pretrain")], "multitask_joint"]
    return [n for n in names if n not in skip]


@dataclass
class Protocol:
    """One protocol run: the shared setting, the labelled fraction, the tasks and the bundles left out."""

    setting: RunSetting
    labelled_fraction: float
    tasks: list[str]
    skip: list[str]
    dry_run: bool = False


def run_seed(protocol: Protocol, seed: int, runner: Runner) -> dict[str, Any]:
    """The protocol for one seed; returns what the report needs."""
    setting = protocol.setting
    seed_dir = setting.out / f"seed{seed}"
    data, datalist_sha = setting.seed_data(seed_dir, protocol.labelled_fraction, seed)
    names = stage1_names(protocol.tasks, protocol.skip)
    steps = {n: setting.step(n, n, seed_dir / n, data, {"datalist": datalist_sha}) for n in names}
    print(f"[seed {seed}] stage 1: {', '.join(names)} ({runner.jobs} at a time)")
    runner.run_all({f"[seed {seed}]   {n}": partial(train_step, runner, s, setting.force) for n, s in steps.items()})

    selection_file = seed_dir / "teachers.json"
    # a variant left out on purpose: its task takes the other mode
    allow_missing = any(n.endswith(("_joint", "_pretrain")) and n != "multitask_joint" for n in protocol.skip)
    if not protocol.dry_run and select_teachers(seed_dir, protocol.tasks, selection_file, allow_missing) != 0:
        raise RuntimeError(f"[seed {seed}] teacher selection failed (see above)")
    teachers = json.loads(selection_file.read_text())["teachers"] if selection_file.is_file() else []
    facts = {"datalist": datalist_sha, "teachers": [t["sha256"] for t in teachers]}
    distill = setting.step(
        "distill", "distill", seed_dir / "distill", data, facts, {"teachers_file": str(selection_file)}
    )
    print(f"[seed {seed}] stage 2: distill: {train_step(runner, distill, setting.force)}")
    models = {**steps, "distill": distill}
    if not protocol.dry_run:  # (the evaluations need the trained models)
        print(f"[seed {seed}] test evaluation")
        evaluations = {f"[seed {seed}]   {s.name}": partial(evaluate_step, runner, s) for s in models.values()}
        evaluations[f"[seed {seed}]   distill ensemble"] = partial(evaluate_step, runner, distill, True)
        runner.run_all(evaluations)
    return {
        "seed": seed,
        "dir": str(seed_dir),
        "models": {n: str(s.out) for n, s in models.items()},
        "teachers": teachers,
    }


def run_protocol(
    dataset_dir: str | Path,
    out: str | Path,
    labelled_fraction: float = 0.2,
    seeds: Sequence[int] = (0,),
    scale: str = "full",
    tasks: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    overrides: dict[str, Any] | None = None,
    jobs: int | None = None,
    nproc_per_bundle: int = 1,
    skip_bad: bool = False,
    force: bool = False,
    dry_run: bool = False,
    publish_to: str | Path | None = None,
    label: str | None = None,
    install_seed: int | None = None,
    argv: Sequence[str] = (),
) -> int:
    """Run the protocol for every seed, write the report (and with ``publish_to`` the summary the bundle
    READMEs show, named ``label``, with the command ``scripts/run_pipeline.py <argv>``); print the table.
    ``install_seed``: then install that seed's models into the bundles (``pipeline.install``)."""
    if install_seed is not None and install_seed not in seeds:
        raise SystemExit(f"error: --install {install_seed}: not one of the run's seeds {list(seeds)}")
    setting = RunSetting(Path(dataset_dir), Path(out), scale, dict(overrides or {}), skip_bad, force)
    tasks = list(tasks or list_tasks())
    protocol = Protocol(setting, labelled_fraction, tasks, list(skip), dry_run)
    runner = Runner(jobs, nproc_per_bundle, setting.out / "logs", dry_run)
    start = time.time()
    try:
        seed_runs = [run_seed(protocol, seed, runner) for seed in seeds]
    except DataValidationError as e:
        raise SystemExit(f"error: {e}") from None
    if dry_run:
        return 0
    settings = {
        "dataset_dir": setting.shown["dataset_dir"],
        "labelled_fraction": labelled_fraction,
        "scale": scale,
        "overrides": setting.preset,
        "tasks": tasks,
        "wall_time_s": round(time.time() - start, 1),
    }
    table = write_report(setting.out, seed_runs, settings)
    if publish_to:
        results = json.loads((setting.out / "results.json").read_text())
        command = portable_command("scripts/run_pipeline.py", argv)
        publish(publish_to, {"kind": "pipeline", "label": label or setting.out.name, "command": command, **results})
    print(table)
    print(f"report: {setting.out / 'report.md'}  results: {setting.out / 'results.json'}")
    if install_seed is not None:
        try:
            lines = install_run(setting.out / f"seed{install_seed}")
        except InstallError as e:
            raise SystemExit(f"error: {e}") from None
        print(f"installed seed {install_seed} into bundles/:\n  " + "\n  ".join(lines))
    return 0
