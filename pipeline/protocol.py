"""The whole two-stage protocol for one dataset, for one or several seeds, resumable.

Per seed (and with ``folds`` per fold: every image is tested once per seed): a seeded datalist (split,
labelled subset, and the unlabelled pool when given), then the baseline, the stage-1 variants,
``multitask_joint`` and the semi-supervised competitor ``mean_teacher`` (independent: run side by side when
the hardware allows), teacher selection (``common.distill.selection``), distillation, then every model and
the plain teacher ensemble evaluated on the held-out test split and on each external test set. With an
unlabelled pool, the ``*_pretrain`` variants pre-train on the pool alone, once per seed, in a fingerprinted
store (``<out>/pretrained/seed<S>/<bundle>``, or ``pretrain_store``) that every labelled subset and fold of
the seed reuses. Before testing, every model's post-processing (threshold, minimum area, lower threshold, flip
TTA) is tuned on the validation split by the same grid (``configs/tune.json``); each model is tested with the
default and with its tuned post-processing (``test`` and ``test_tuned``).
Everything is written under the run folder (bundles stay untouched: their ``ckpt_dir``/``log_dir``/
``output_dir`` are overridden), ending with ``report.md``, figures and ``results.json``
(``pipeline.report``). Resuming: ``pipeline.steps``; hardware: ``pipeline.runner``. A dry
run (``plan_split``) prints per step what would be reused, trained, resumed or evaluated and why, writing nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from common.data.datalist import DataValidationError
from common.distill.selection import select, select_teachers
from common.ssl import list_tasks
from common.utils.checkpoints import CheckpointError
from common.utils.io import file_sha256
from pipeline.arms import changes_ensemble, check_arms
from pipeline.install import InstallError, install_run
from pipeline.paths import portable_command, portable_path, publish
from pipeline.report import write_report
from pipeline.runner import Runner, StepError
from pipeline.setting import RunSetting
from pipeline.steps import (
    TUNED,
    Step,
    evaluate_step,
    plan_evaluation,
    plan_training,
    plan_tuning,
    teachers_stamp,
    train_step,
    tune_step,
)


def stage1_names(tasks: Sequence[str], skip: Sequence[str]) -> list[str]:
    """baseline, <task>_joint/<task>_pretrain per task, multitask_joint, mean_teacher; minus ``skip``."""
    names = [
        "baseline",
        *[f"{t}_{m}" for t in tasks for m in ("joint", "pretrain")],
        "multitask_joint",
        "mean_teacher",
    ]
    return [n for n in names if n not in skip]


def teacher_candidates(names: Sequence[str]) -> list[str]:
    """The stage-1 runs teacher selection chooses from (``<task>_joint``/``<task>_pretrain``)."""
    return [n for n in names if n.endswith(("_joint", "_pretrain")) and n != "multitask_joint"]


@dataclass
class Protocol:
    """One protocol run: the shared setting, the labelled fraction (or count), the tasks, the bundles left
    out, the k-fold split (``folds``: None for one 70/15/15 split) and the external test sets."""

    setting: RunSetting
    labelled_fraction: float
    tasks: list[str]
    skip: list[str]
    folds: int | None = None
    labelled_count: int | None = None
    external: dict[str, Path] = field(default_factory=dict)
    only_folds: tuple[int, ...] = ()  # run (and report) only these folds of the k (a sitting's share of a study)
    tune: bool = True  # tune every model's post-processing on validation, then also test with it
    # student variants trained beside the default one from the same teachers (name -> distill overrides, e.g.
    # the KD temperature x alpha sweep): each is a model of the report (``distill_<name>``)
    student_arms: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def allow_missing(self) -> bool:
        """A variant left out on purpose: its task takes the other mode."""
        return bool(teacher_candidates(self.skip))

    @property
    def stores_pretraining(self) -> bool:
        """With an unlabelled pool the pre-training variants pre-train on it alone, once per seed."""
        return bool(self.setting.unlabelled_dirs)

    def splits(self, seeds: Sequence[int]) -> list[tuple[int, int | None]]:
        """(seed, fold) of every split the run trains on (fold None without ``folds``; with ``only_folds`` those)."""
        folds = [f for f in range(self.folds) if not self.only_folds or f in self.only_folds] if self.folds else [None]
        return [(seed, fold) for seed in seeds for fold in folds]

    def split_dir(self, seed: int, fold: int | None) -> Path:
        seed_dir = self.setting.out / f"seed{seed}"
        return seed_dir if fold is None else seed_dir / f"fold{fold}"

    def split_data(self, seed: int, fold: int | None, write: bool = True) -> tuple[dict[str, Any], str]:
        """The split's datalist (written once) as data overrides, and its sha256."""
        return self.setting.seed_data(
            self.split_dir(seed, fold),
            self.labelled_fraction,
            seed,
            write,
            folds=self.folds,
            fold=fold or 0,
            labelled_count=self.labelled_count,
        )

    def pretrain_store(self, seed: int, split_dir: Path, write: bool = True) -> dict[str, Step]:
        """The pre-training runs of the seed's store (``pretrain.json`` on the pool alone), by bundle."""
        data, pool_sha = self.setting.pool_data(split_dir / "datalist.json", seed, write)
        store = self.setting.pretrain_store / f"seed{seed}"
        names = [n for n in stage1_names(self.tasks, self.skip) if n.endswith("_pretrain")]
        steps = {n: self.setting.step(n, n, store / n, data, {"pool": pool_sha}) for n in names}
        for step in steps.values():
            step.config = "pretrain.json"
        return steps

    def stage1(
        self, seed_dir: Path, data: dict[str, Any], datalist_sha: str, store: dict[str, Step] | None = None
    ) -> dict[str, Step]:
        """The stage-1 runs of a split; a ``*_pretrain`` run with a stored pre-training fine-tunes from it."""
        steps = {}
        for n in stage1_names(self.tasks, self.skip):
            facts, extra = {"datalist": datalist_sha}, None
            if store and n in store:
                pretrained = store[n].model_file
                facts["pretrained"] = file_sha256(pretrained) if pretrained.is_file() else None
                extra = {"pretrained_file": str(pretrained)}
            steps[n] = self.setting.step(n, n, seed_dir / n, data, facts, extra)
        return steps

    def distill(
        self, seed_dir: Path, data: dict[str, Any], datalist_sha: str, teachers: list[dict], arm: str | None = None
    ) -> Step:
        """The student's run (``arm``: the student variant of that name, in ``distill_<arm>``)."""
        facts = {"datalist": datalist_sha, "teachers": [t["sha256"] for t in teachers]}
        extra = {"teachers_file": str(seed_dir / "teachers.json"), **(self.student_arms[arm] if arm else {})}
        name = f"distill_{arm}" if arm else "distill"
        return self.setting.step(name, "distill", seed_dir / name, data, facts, extra)

    def ensemble_arms(self) -> list[str]:
        """The student arms that distil another ensemble than the default student's (``changes_ensemble``)."""
        return [arm for arm, overrides in self.student_arms.items() if changes_ensemble(overrides)]

    def students(self, seed_dir: Path, data: dict[str, Any], datalist_sha: str, teachers: list[dict]) -> list[Step]:
        """The student, then every student variant, all from the same teachers."""
        arms = [None, *self.student_arms]
        return [self.distill(seed_dir, data, datalist_sha, teachers, arm) for arm in arms]


def split_label(seed: int, fold: int | None) -> str:
    """How logs and the report name a split: ``seed 0`` or ``seed 0 fold 2``."""
    return f"seed {seed}" if fold is None else f"seed {seed} fold {fold}"


def run_split(protocol: Protocol, seed: int, fold: int | None, runner: Runner) -> dict[str, Any]:
    """The protocol for one seed (and fold); returns what the report needs."""
    setting = protocol.setting
    seed_dir = protocol.split_dir(seed, fold)
    tag = f"[{split_label(seed, fold)}]"
    data, datalist_sha = protocol.split_data(seed, fold)
    store = None
    if protocol.stores_pretraining:
        store = protocol.pretrain_store(seed, seed_dir)
        where = setting.pretrain_store / f"seed{seed}"
        print(f"{tag} pre-training on the unlabelled pool alone, once per seed ({where}): {', '.join(store)}")

        def pretrain(step: Step) -> str:
            done = train_step(runner, step, setting.force)
            return "reused" if done == "current" else done

        runner.run_all({f"{tag}   {n}": partial(pretrain, s) for n, s in store.items()})
    steps = protocol.stage1(seed_dir, data, datalist_sha, store)
    print(f"{tag} stage 1: {', '.join(steps)} ({runner.jobs} at a time)")
    runner.run_all({f"{tag}   {n}": partial(train_step, runner, s, setting.force) for n, s in steps.items()})

    selection_file = seed_dir / "teachers.json"
    entries, problems, refused = select(seed_dir, protocol.tasks, protocol.allow_missing)
    if not entries and not (problems and not protocol.allow_missing):
        # every candidate blank on validation: the method has no teacher to distil, which is a result of the
        # split (reported), not a failure of the run; the other models are evaluated as usual
        blank = ", ".join(r["bundle"] for r in refused)
        print(f"{tag} teacher selection: no usable teacher (blank on validation: {blank}); no student this split")
        teachers, students = [], []
    elif select_teachers(seed_dir, protocol.tasks, selection_file, protocol.allow_missing) != 0:
        raise StepError(f"{tag} teacher selection failed (see above)")
    else:
        selection = json.loads(selection_file.read_text())
        teachers, refused = selection["teachers"], selection.get("refused", [])
        students = protocol.students(seed_dir, data, datalist_sha, teachers)
    if len(students) == 1:
        print(f"{tag} stage 2: distill: {train_step(runner, students[0], setting.force)}")
    elif students:
        print(f"{tag} stage 2: {', '.join(s.name for s in students)} ({runner.jobs} at a time)")
        runner.run_all({f"{tag}   {s.name}": partial(train_step, runner, s, setting.force) for s in students})
    models = {**steps, **{s.name: s for s in students}}
    if protocol.tune:
        print(f"{tag} post-processing tuned on validation (every model alike)")
        runner.run_all({f"{tag}   {s.name}": partial(tune_step, runner, s) for s in models.values()})
    print(f"{tag} test evaluation (default post-processing{', then the tuned one' if protocol.tune else ''})")
    evaluations = {f"{tag}   {s.name}": partial(evaluate_step, runner, s) for s in models.values()}
    if protocol.tune:
        tuned = {f"{tag}   {s.name} tuned": partial(evaluate_step, runner, s, False, TUNED) for s in models.values()}
        evaluations.update(tuned)
    distill = models.get("distill")
    if distill:
        evaluations[f"{tag}   distill ensemble"] = partial(evaluate_step, runner, distill, True)
    for arm in protocol.ensemble_arms() if distill else []:  # an arm's own ensemble: on the test split too
        evaluations[f"{tag}   distill_{arm} ensemble"] = partial(evaluate_step, runner, models[f"distill_{arm}"], True)
    for name, folder in protocol.external.items():
        ext = setting.external_data(name, folder)
        section = f"external_{name}"
        for s in models.values():
            evaluations[f"{tag}   {s.name} on {name}"] = partial(evaluate_step, runner, s, False, section, ext)
        if distill:
            evaluations[f"{tag}   distill ensemble on {name}"] = partial(
                evaluate_step, runner, distill, True, section, ext
            )
    runner.run_all(evaluations)
    datalist = json.loads((seed_dir / "datalist.json").read_text())
    return {
        "seed": seed,
        "fold": fold,
        "key": str(seed) if fold is None else f"{seed}/fold{fold}",
        "dir": str(seed_dir),
        "models": {n: str(s.out) for n, s in models.items()},
        "teachers": teachers,
        "refused": refused,
        "test_ids": [it["id"] for it in datalist["test"]],
        "pool": (datalist.get("pool") or {}).get("counts"),
    }


def plan_split(protocol: Protocol, seed: int, fold: int | None = None) -> None:
    """Print what ``run_split`` would do for the seed (and fold) and why (current / would-train /
    would-resume / would-evaluate), reading only: nothing is run or written."""
    setting = protocol.setting
    seed_dir = protocol.split_dir(seed, fold)
    tag = f"[{split_label(seed, fold)}]"
    datalist_file = seed_dir / "datalist.json"
    existed = datalist_file.is_file()
    data, datalist_sha = protocol.split_data(seed, fold, write=False)
    print(f"{tag} datalist: {'current' if existed else 'would-write'} ({datalist_file})")
    store = None
    if protocol.stores_pretraining and not existed:
        print(f"{tag} pre-training store: would-pretrain what is not stored yet (after the datalist is written)")
    elif protocol.stores_pretraining:
        store = protocol.pretrain_store(seed, seed_dir, write=False)
        for name, step in store.items():
            plan = plan_training(step, setting.force)
            word = "reused (stored)" if plan.action == "current" else plan.label
            print(f"{tag}   pre-training {name}: {word}")
    steps = protocol.stage1(seed_dir, data, datalist_sha, store)
    plans = {n: plan_training(s, setting.force) for n, s in steps.items()}
    print(f"{tag} stage 1: {', '.join(steps)}")
    for name, plan in plans.items():
        print(f"{tag}   {name}: {plan.label}")

    pending = [n for n in teacher_candidates(list(steps)) if plans[n].action != "current"]
    distill, stamp, students, no_student = None, None, {}, False
    if pending:
        print(f"{tag} teacher selection: would-select (after training {', '.join(pending)})")
        label = "would-train (its teachers are trained first)"
    else:
        teachers, problems, refused = select(seed_dir, protocol.tasks, protocol.allow_missing)
        if problems and not protocol.allow_missing:
            print(f"{tag} teacher selection: would fail: {'; '.join(problems)}")
            return
        if not teachers:
            blank = ", ".join(r["bundle"] for r in refused)
            print(f"{tag} teacher selection: no usable teacher (blank on validation: {blank}); no student this split")
            label, no_student = "none (no teacher)", True
        else:
            chosen = ", ".join(f"{t['task']}: {t['mode']}" for t in teachers)
            print(f"{tag} teacher selection: would-select ({chosen}) into {seed_dir / 'teachers.json'}")
            students = {s.name: s for s in protocol.students(seed_dir, data, datalist_sha, teachers)}
            distill, stamp = students["distill"], teachers_stamp(teachers)
            plans.update({n: plan_training(s, setting.force) for n, s in students.items()})
            label = plans["distill"].label
    print(f"{tag} stage 2: distill: {label}")
    variants = [] if no_student else [f"distill_{arm}" for arm in protocol.student_arms]
    for name in variants:
        print(f"{tag}   {name}: {plans[name].label if name in plans else 'would-train (after teacher selection)'}")
    student_steps = [] if no_student else [("distill", distill), *((n, students.get(n)) for n in variants)]

    print(f"{tag} post-processing tuned on validation" + ("" if protocol.tune else ": no (--no-tuning)"))
    for name, step in [*steps.items(), *student_steps] if protocol.tune else []:
        plan = plans.get(name)
        word, why = (
            ("would-tune", "after training")
            if step is None or plan is None or plan.action != "current"
            else plan_tuning(step)
        )
        print(f"{tag}   {name}: {word} ({why})")
    print(f"{tag} test evaluation")
    evaluations = [(n, s, False) for n, s in steps.items()]
    evaluations += [(n, st, False) for n, st in student_steps]
    evaluations += [] if no_student else [("distill ensemble", distill, True)]
    arm_ensembles = [] if no_student else protocol.ensemble_arms()
    evaluations += [(f"distill_{a} ensemble", students.get(f"distill_{a}"), True) for a in arm_ensembles]
    tuned = [(TUNED, " tuned")] if protocol.tune else []
    sections = [("test", ""), *tuned, *((f"external_{n}", f" on {n}") for n in protocol.external)]
    for section, where in sections:
        for name, step, ensemble in evaluations:
            if ensemble and section == TUNED:
                continue  # the ensemble is evaluated with the default post-processing only
            plan = plans.get(name.split()[0])
            if step is None or plan is None or plan.action != "current":
                word, why = "would-evaluate", "after training"
            else:
                word, why = plan_evaluation(step, ensemble, stamp, section)
            print(f"{tag}   {name}{where}: {word} ({why})")


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
    tracking: bool = False,
    publish_to: str | Path | None = None,
    label: str | None = None,
    install_seed: int | None = None,
    argv: Sequence[str] = (),
    folds: int | None = None,
    labelled_count: int | None = None,
    unlabelled_dirs: Sequence[str | Path] = (),
    pool_size: int | str = "all",
    external: dict[str, Path] | None = None,
    pretrain_store: str | Path | None = None,
    only_folds: Sequence[int] = (),
    tune: bool = True,
    student_arms: dict[str, dict[str, Any]] | None = None,
) -> int:
    """Run the protocol for every seed, write the report (and with ``publish_to`` the summary the bundle
    READMEs show, named ``label``, with the command ``scripts/run_pipeline.py <argv>``); print the table.
    ``install_seed``: then install that seed's models into the bundles (``pipeline.install``). ``dry_run``:
    print the plan only (nothing written); ``no_retrain``: stop instead of replacing a completed model;
    ``tracking``: every bundle command tracked with MLflow in ``<out>/mlruns`` (``pipeline.tracking``).
    ``folds``: stratified k-fold (each image tested once per seed) instead of one 70/15/15 split;
    ``labelled_count``: that many labelled training images instead of ``labelled_fraction``;
    ``unlabelled_dirs``/``pool_size``: the unlabelled pool; ``external``: name -> folder of an external test set;
    ``pretrain_store``: where pool-only pre-trainings are kept (default ``<out>/pretrained``; share one between
    the run folders of several labelled sizes so that each task pre-trains once per seed); ``only_folds``: run
    and report only these of the ``folds`` (the same split of every image; a study too long for one sitting runs
    fold after fold, each report covering the folds done); ``tune`` false: no post-processing tuning (the report's
    tuned columns stay empty); ``student_arms``: student variants (name -> distill overrides) trained from the
    same teachers beside the default student, each a model of the report (a KD sweep; read it on validation)."""
    bad = [f for f in only_folds if not folds or not 0 <= f < folds]
    if bad:
        raise SystemExit(f"error: --only-folds {bad[0]}: not a fold of --folds {folds} (0 to {(folds or 1) - 1})")
    if install_seed is not None and install_seed not in seeds:
        raise SystemExit(f"error: --install {install_seed}: not one of the run's seeds {list(seeds)}")
    tasks = list(tasks or list_tasks())
    check_arms(student_arms or {}, "distill", option="--student-arm")
    bundles = [*stage1_names(tasks, skip), "distill"]
    setting = RunSetting(
        Path(dataset_dir),
        Path(out),
        scale,
        dict(overrides or {}),
        skip_bad,
        force,
        bundles,
        unlabelled_dirs,
        pool_size,
        None if pretrain_store is None else Path(pretrain_store),
    )
    protocol = Protocol(
        setting,
        labelled_fraction,
        tasks,
        list(skip),
        folds,
        labelled_count,
        dict(external or {}),
        tuple(only_folds),
        tune,
        dict(student_arms or {}),
    )
    start = time.time()
    try:
        if dry_run:
            for seed, fold in protocol.splits(seeds):
                plan_split(protocol, seed, fold)
            print(f"dry run: nothing was trained, evaluated or written (run folder {setting.out})")
            return 0
        tracking_dir = setting.out if tracking else None
        runner = Runner(jobs, nproc_per_bundle, setting.out / "logs", no_retrain=no_retrain, tracking_dir=tracking_dir)
        seed_runs = [run_split(protocol, seed, fold, runner) for seed, fold in protocol.splits(seeds)]
        settings = {
            "dataset_dir": setting.shown["dataset_dir"],
            "labelled_fraction": labelled_fraction,
            "labelled_count": labelled_count,
            "folds": folds,
            "only_folds": list(only_folds) or None,
            "unlabelled_dirs": setting.shown["unlabelled_dirs"],
            "pool_size": pool_size,
            "external": {name: portable_path(folder) for name, folder in protocol.external.items()},
            "scale": scale,
            "overrides": setting.preset,
            "tasks": tasks,
            "student_arms": protocol.student_arms or None,
            "wall_time_s": round(time.time() - start, 1),
        }
        table = write_report(setting.out, seed_runs, settings)
    except (DataValidationError, StepError, CheckpointError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if publish_to:
        results = json.loads((setting.out / "results.json").read_text())
        command = portable_command("scripts/run_pipeline.py", argv)
        publish(publish_to, {"kind": "pipeline", "label": label or setting.out.name, "command": command, **results})
    print(table)
    print(f"report: {setting.out / 'report.md'}  results: {setting.out / 'results.json'}")
    if install_seed is not None:
        try:
            lines = install_run(protocol.split_dir(install_seed, 0 if folds else None))
        except InstallError as e:
            raise SystemExit(f"error: {e}") from None
        print(f"installed seed {install_seed} into bundles/:\n  " + "\n  ".join(lines))
    return 0
