"""The whole two-stage protocol for one dataset, for one or several seeds, resumable.

Per seed: a seeded datalist (split and labelled subset), then the baseline, the stage-1 variants and
``multitask_joint`` (independent: run side by side when the hardware allows), teacher selection
(``common.distill.selection``), distillation, then every model and the plain teacher ensemble evaluated
on the held-out test split. Everything is written under the run folder (bundles stay untouched: their
``ckpt_dir``/``log_dir``/``output_dir`` are overridden), ending with ``report.md``, figures and
``results.json`` (``pipeline.report``). Resuming: ``pipeline.steps``; hardware: ``pipeline.runner``. A dry
run (``plan_seed``) prints per step what would be reused, trained, resumed or evaluated and why, writing nothing.
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
from common.distill.selection import select, select_teachers
from common.ssl import list_tasks
from common.utils.checkpoints import CheckpointError
from pipeline.install import InstallError, install_run
from pipeline.paths import portable_command, publish
from pipeline.report import write_report
from pipeline.runner import Runner, StepError
from pipeline.setting import RunSetting
from pipeline.steps import Step, evaluate_step, plan_evaluation, plan_training, teachers_stamp, train_step


def stage1_names(tasks: Sequence[str], skip: Sequence[str]) -> list[str]:
    """baseline, <task>_joint/<task>_pretrain per task, multitask_joint; minus ``skip``."""
    names = ["baseline", *[f"{t}_{m}" for t in tasks for m in ("joint", "pretrain")], "multitask_joint"]
    return [n for n in names if n not in skip]


def teacher_candidates(names: Sequence[str]) -> list[str]:
    """The stage-1 runs teacher selection chooses from (``<task>_joint``/``<task>_pretrain``)."""
    return [n for n in names if n.endswith(("_joint", "_pretrain")) and n != "multitask_joint"]


@dataclass
class Protocol:
    """One protocol run: the shared setting, the labelled fraction, the tasks and the bundles left out."""

    setting: RunSetting
    labelled_fraction: float
    tasks: list[str]
    skip: list[str]

    @property
    def allow_missing(self) -> bool:
        """A variant left out on purpose: its task takes the other mode."""
        return bool(teacher_candidates(self.skip))

    def stage1(self, seed_dir: Path, data: dict[str, Any], datalist_sha: str) -> dict[str, Step]:
        names = stage1_names(self.tasks, self.skip)
        return {n: self.setting.step(n, n, seed_dir / n, data, {"datalist": datalist_sha}) for n in names}

    def distill(self, seed_dir: Path, data: dict[str, Any], datalist_sha: str, teachers: list[dict]) -> Step:
        facts = {"datalist": datalist_sha, "teachers": [t["sha256"] for t in teachers]}
        extra = {"teachers_file": str(seed_dir / "teachers.json")}
        return self.setting.step("distill", "distill", seed_dir / "distill", data, facts, extra)


def run_seed(protocol: Protocol, seed: int, runner: Runner) -> dict[str, Any]:
    """The protocol for one seed; returns what the report needs."""
    setting = protocol.setting
    seed_dir = setting.out / f"seed{seed}"
    data, datalist_sha = setting.seed_data(seed_dir, protocol.labelled_fraction, seed)
    steps = protocol.stage1(seed_dir, data, datalist_sha)
    print(f"[seed {seed}] stage 1: {', '.join(steps)} ({runner.jobs} at a time)")
    runner.run_all({f"[seed {seed}]   {n}": partial(train_step, runner, s, setting.force) for n, s in steps.items()})

    selection_file = seed_dir / "teachers.json"
    if select_teachers(seed_dir, protocol.tasks, selection_file, protocol.allow_missing) != 0:
        raise StepError(f"[seed {seed}] teacher selection failed (see above)")
    selection = json.loads(selection_file.read_text())
    teachers = selection["teachers"]
    distill = protocol.distill(seed_dir, data, datalist_sha, teachers)
    print(f"[seed {seed}] stage 2: distill: {train_step(runner, distill, setting.force)}")
    models = {**steps, "distill": distill}
    print(f"[seed {seed}] test evaluation")
    evaluations = {f"[seed {seed}]   {s.name}": partial(evaluate_step, runner, s) for s in models.values()}
    evaluations[f"[seed {seed}]   distill ensemble"] = partial(evaluate_step, runner, distill, True)
    runner.run_all(evaluations)
    return {
        "seed": seed,
        "dir": str(seed_dir),
        "models": {n: str(s.out) for n, s in models.items()},
        "teachers": teachers,
        "refused": selection.get("refused", []),
    }


def plan_seed(protocol: Protocol, seed: int) -> None:
    """Print what ``run_seed`` would do for the seed and why (current / would-train / would-resume /
    would-evaluate), reading only: nothing is run or written."""
    setting = protocol.setting
    seed_dir = setting.out / f"seed{seed}"
    datalist_file = seed_dir / "datalist.json"
    existed = datalist_file.is_file()
    data, datalist_sha = setting.seed_data(seed_dir, protocol.labelled_fraction, seed, write=False)
    print(f"[seed {seed}] datalist: {'current' if existed else 'would-write'} ({datalist_file})")
    steps = protocol.stage1(seed_dir, data, datalist_sha)
    plans = {n: plan_training(s, setting.force) for n, s in steps.items()}
    print(f"[seed {seed}] stage 1: {', '.join(steps)}")
    for name, plan in plans.items():
        print(f"[seed {seed}]   {name}: {plan.label}")

    pending = [n for n in teacher_candidates(list(steps)) if plans[n].action != "current"]
    distill, stamp = None, None
    if pending:
        print(f"[seed {seed}] teacher selection: would-select (after training {', '.join(pending)})")
        label = "would-train (its teachers are trained first)"
    else:
        teachers, problems, refused = select(seed_dir, protocol.tasks, protocol.allow_missing)
        if (problems and not protocol.allow_missing) or not teachers:
            blank = "; ".join(f"{r['bundle']}: blank" for r in refused)
            why = "; ".join(problems) or f"no usable teacher ({blank})"
            print(f"[seed {seed}] teacher selection: would fail: {why}")
            return
        chosen = ", ".join(f"{t['task']}: {t['mode']}" for t in teachers)
        print(f"[seed {seed}] teacher selection: would-select ({chosen}) into {seed_dir / 'teachers.json'}")
        distill, stamp = protocol.distill(seed_dir, data, datalist_sha, teachers), teachers_stamp(teachers)
        plans["distill"] = plan_training(distill, setting.force)
        label = plans["distill"].label
    print(f"[seed {seed}] stage 2: distill: {label}")

    print(f"[seed {seed}] test evaluation")
    evaluations = [(n, s, False) for n, s in steps.items()]
    evaluations += [("distill", distill, False), ("distill ensemble", distill, True)]
    for name, step, ensemble in evaluations:
        plan = plans.get(name.split()[0])
        if step is None or plan is None or plan.action != "current":
            word, why = "would-evaluate", "after training"
        else:
            word, why = plan_evaluation(step, ensemble, stamp)
        print(f"[seed {seed}]   {name}: {word} ({why})")


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
    no_retrain: bool = False,
    publish_to: str | Path | None = None,
    label: str | None = None,
    install_seed: int | None = None,
    argv: Sequence[str] = (),
) -> int:
    """Run the protocol for every seed, write the report (and with ``publish_to`` the summary the bundle
    READMEs show, named ``label``, with the command ``scripts/run_pipeline.py <argv>``); print the table.
    ``install_seed``: then install that seed's models into the bundles (``pipeline.install``). ``dry_run``:
    print the plan only (nothing written); ``no_retrain``: stop instead of replacing a completed model."""
    if install_seed is not None and install_seed not in seeds:
        raise SystemExit(f"error: --install {install_seed}: not one of the run's seeds {list(seeds)}")
    tasks = list(tasks or list_tasks())
    bundles = [*stage1_names(tasks, skip), "distill"]
    setting = RunSetting(Path(dataset_dir), Path(out), scale, dict(overrides or {}), skip_bad, force, bundles)
    protocol = Protocol(setting, labelled_fraction, tasks, list(skip))
    start = time.time()
    try:
        if dry_run:
            for seed in seeds:
                plan_seed(protocol, seed)
            print(f"dry run: nothing was trained, evaluated or written (run folder {setting.out})")
            return 0
        runner = Runner(jobs, nproc_per_bundle, setting.out / "logs", no_retrain=no_retrain)
        seed_runs = [run_seed(protocol, seed, runner) for seed in seeds]
        settings = {
            "dataset_dir": setting.shown["dataset_dir"],
            "labelled_fraction": labelled_fraction,
            "scale": scale,
            "overrides": setting.preset,
            "tasks": tasks,
            "wall_time_s": round(time.time() - start, 1),
        }
        table = write_report(setting.out, seed_runs, settings)
    except (DataValidationError, StepError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
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
