"""One bundle run of the protocol: train it (resumable) and evaluate it, each only when not already current.

A training step is current when its ``metrics.json`` says ``complete``, records the same fingerprint
(bundle configs + overrides + the extra facts: datalist content, for the student the teachers' sha256)
and its ``model.pt`` still has the sha256 training recorded (a changed or corrupt model is retrained, or
stops the run under ``no_retrain``). Nothing completed is deleted before its replacement is: a training
runs in ``<out>.partial`` and replaces ``<out>`` by renames only once it completed; an interrupted one
with a matching fingerprint and a ``checkpoint_epoch=N.pt`` continues there with ``--resume true``. An
evaluation is skipped when its model file is unchanged. Code changes are not part of the fingerprint:
pass ``force`` after changing ``common``. ``plan_training``/``plan_evaluation`` say what would happen and
why without writing anything (``--dry-run``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.utils.checkpoints import checkpoint_problem
from common.utils.io import file_sha256
from common.utils.metrics import RunMetrics, update_metrics_file
from pipeline.runner import Runner, StepError
from pipeline.scales import config_keys

CORRUPT = "model.pt changed or corrupt since training"
NOT_TRAINED = "not trained yet"
MODEL, PRETRAINED = "model.pt", "pretrained.pt"  # what a train.json / a pretrain.json run makes under models/
# the configs a training reads: evaluation, inference and metadata changes must not make a trained model stale
TRAINING_CONFIGS = ("train.json", "pretrain.json", "multi_gpu_train.json")


@dataclass
class Step:
    """One bundle run: train (and its evaluation), with the overrides that make it this seed's run."""

    name: str
    bundle: Path
    out: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    extra_fingerprint: Any = None
    config: str = "train.json"  # pretrain.json: the pre-training phase alone, which makes pretrained.pt

    @property
    def metrics_file(self) -> Path:
        return self.out / "models" / "metrics.json"

    @property
    def product(self) -> str:
        """What the run makes under ``models/``: ``model.pt``, or ``pretrained.pt`` for ``pretrain.json``."""
        return PRETRAINED if self.config == "pretrain.json" else MODEL

    @property
    def model_file(self) -> Path:
        return self.out / "models" / self.product

    @property
    def metrics(self) -> RunMetrics:
        """The run's ``metrics.json`` as it is now (empty before training)."""
        return RunMetrics.read(self.metrics_file)

    @property
    def staging(self) -> Path:
        """Where a new training runs until it completes (``<out>.partial``)."""
        return self.out.with_name(self.out.name + ".partial")

    @property
    def replaced(self) -> Path:
        """Where the previous outputs wait while the staging folder moves in (``<out>.old``)."""
        return self.out.with_name(self.out.name + ".old")


def output_overrides(out: Path) -> dict[str, str]:
    """Where one run writes its models, logs and evaluation outputs (never inside the bundle)."""
    return {"ckpt_dir": str(out / "models"), "log_dir": str(out / "logs"), "output_dir": str(out / "eval")}


def fingerprint(step: Step) -> str:
    """sha256 of the bundle's training configs (``TRAINING_CONFIGS``), the overrides and the extra facts
    (datalist, teachers)."""
    digest = hashlib.sha256()
    for name in TRAINING_CONFIGS:
        if (config := step.bundle / "configs" / name).is_file():
            digest.update(config.name.encode() + config.read_bytes())
    known = config_keys(step.bundle)
    # an override of a key the bundle does not have changes nothing (e.g. HSSL's multidomain_datalist given
    # to every bundle with --set): it must not make a finished run look stale
    overrides = {k: v for k, v in step.overrides.items() if k != "resume" and k.split("#")[0] in known}
    digest.update(json.dumps([overrides, step.extra_fingerprint], sort_keys=True, default=str).encode())
    return "fp-" + digest.hexdigest()  # a prefix, so the CLI never reads it as a number


def _metrics(models: Path) -> RunMetrics:
    """``models/metrics.json`` (empty when absent or not JSON: then nothing in it is trusted)."""
    try:
        return RunMetrics.read(models / "metrics.json")
    except ValueError:  # a torn or foreign file
        return RunMetrics()


def outcome(models: Path, product: str = MODEL) -> tuple[str | None, str | None, str | None]:
    """(fingerprint, status, the product's recorded sha256) of the run whose outputs are in ``models``:
    from ``metrics.json``'s ``config``/``training``/``model`` sections, or for ``pretrained.pt`` from its
    ``pretraining`` section (``common.utils.metrics.record_pretrained``)."""
    metrics = _metrics(models)
    if product == PRETRAINED:
        phase = metrics.section("pretraining")
        return phase.get("pipeline_fingerprint"), phase.get("status"), phase.get("sha256")
    return metrics.fingerprint, metrics.status, metrics.model.get("sha256")


def model_problem(models: Path, product: str = MODEL) -> str | None:
    """Why the trained ``models/model.pt`` (or ``pretrained.pt``) cannot be used (missing, or not the file
    training saved), or None.

    Checked against the sha256 training recorded in ``metrics.json``; a model trained before that was
    recorded must at least load."""
    model = models / product
    if not model.is_file():
        return f"{product} is missing"
    recorded = outcome(models, product)[2]
    if recorded is None:
        return None if checkpoint_problem(model) is None else CORRUPT
    return None if file_sha256(model) == recorded else CORRUPT


def _resumable(models: Path) -> tuple[Path | None, str | None]:
    """(a ``*checkpoint_epoch=N.pt`` of ``models`` to resume from, or None; why the checkpoints cannot be used)."""
    found = sorted(models.glob("*checkpoint_epoch=*.pt"))  # either phase
    for checkpoint in found:
        if checkpoint_problem(checkpoint):
            return None, f"its checkpoint {checkpoint.name} is unreadable or corrupt"
    return (found[-1] if found else None), None


@dataclass
class TrainPlan:
    """What ``train_step`` does: ``current`` (reuse), ``train`` (fresh, in the staging folder), ``resume``
    (in ``folder``) or ``finish`` (a staged training already completed: move it in); and why."""

    action: str
    reason: str
    folder: Path
    fingerprint: str
    replaces: bool = False  # a completed model in ``out`` is replaced

    @property
    def label(self) -> str:
        """The dry run's word for it: current / would-train / would-resume, with the reason."""
        word = {"current": "current", "train": "would-train", "resume": "would-resume", "finish": "current"}
        return f"{word[self.action]} ({self.reason})"


def plan_training(step: Step, force: bool) -> TrainPlan:
    """Decide (reading only) whether ``step`` is current, resumes, or trains, and why."""
    current = fingerprint(step)
    done_fingerprint, done_status, _ = outcome(step.out / "models", step.product)
    done_complete = done_status == "complete"
    same = not force and done_fingerprint == current
    if same and done_complete:
        problem = model_problem(step.out / "models", step.product)
        if problem is None:
            why = f"complete, same settings and data, {step.product} as trained"
            return TrainPlan("current", why, step.out, current)
        reason = problem
    elif force and done_fingerprint:
        reason = "--force"
    elif done_fingerprint is None:
        reason = (
            "its metrics.json is unreadable or records no fingerprint" if step.metrics_file.exists() else NOT_TRAINED
        )
    elif done_fingerprint != current:
        reason = "settings, data or teachers changed since training"
    else:
        reason = f"the previous training is {done_status or 'incomplete'} and left no checkpoint"
    replaces = done_complete
    staged_fingerprint, staged_status, _ = outcome(step.staging / "models", step.product)
    if not force and staged_fingerprint == current:
        if staged_status == "complete" and model_problem(step.staging / "models", step.product) is None:
            return TrainPlan(
                "finish", f"trained in {step.staging.name}, not moved in yet", step.staging, current, replaces
            )
        checkpoint, problem = _resumable(step.staging / "models")
        if checkpoint:
            why = f"an interrupted training with the same settings: {step.staging.name}/models/{checkpoint.name}"
            return TrainPlan("resume", why, step.staging, current, replaces)
        reason = problem or reason
    if same and not done_complete:
        checkpoint, problem = _resumable(step.out / "models")
        if checkpoint:
            why = f"an interrupted training with the same settings: models/{checkpoint.name}"
            return TrainPlan("resume", why, step.out, current)
        reason = problem or reason
    return TrainPlan("train", reason, step.staging, current, replaces)


def _recover(step: Step) -> None:
    """Finish a swap that was interrupted between its renames (``<out>.old`` left behind)."""
    old = step.replaced
    if not old.exists():
        return
    if not step.out.exists():
        staged = outcome(step.staging / "models", step.product)[1] == "complete"
        done = staged and model_problem(step.staging / "models", step.product) is None
        os.replace(step.staging if done else old, step.out)
    shutil.rmtree(old, ignore_errors=True)


def _move_in(step: Step) -> None:
    """Replace ``out`` by the completed staging folder (the old outputs are deleted only afterwards)."""
    status = outcome(step.staging / "models", step.product)[1]
    problem = model_problem(step.staging / "models", step.product) if status == "complete" else f"training is {status}"
    if problem:
        raise StepError(f"{step.name}: {problem} in {step.staging}; {step.out} is left as it was")
    if step.replaced.exists():
        shutil.rmtree(step.replaced)
    if step.out.exists():
        os.replace(step.out, step.replaced)
    os.replace(step.staging, step.out)
    shutil.rmtree(step.replaced, ignore_errors=True)


def train_step(runner: Runner, step: Step, force: bool) -> str:
    """Train one bundle unless its outputs are current; return what happened (with ``runner.dry_run``: what
    would happen, writing nothing)."""
    if not runner.dry_run:
        _recover(step)
    plan = plan_training(step, force)
    if runner.dry_run or plan.action == "current":
        return plan.label if runner.dry_run else "current"
    where = f"{step.out.parent.name}/{step.name}"
    if plan.replaces and plan.action != "finish" and runner.no_retrain:
        raise StepError(f"{where}: {plan.reason} ({step.model_file}); run without --no-retrain to retrain it")
    if plan.reason == CORRUPT:
        print(f"{where}: {CORRUPT}; retraining ({step.model_file})")
    if plan.action == "train" and step.staging.exists():
        shutil.rmtree(step.staging)  # another fingerprint, or nothing to resume: start clean
    if plan.action in ("train", "resume"):
        overrides = {
            **step.overrides,
            **output_overrides(plan.folder),
            "pipeline_fingerprint": plan.fingerprint,
            "resume": plan.action == "resume",
        }
        phase = "pretrain" if step.product == PRETRAINED else "train"
        runner.bundle(
            [step.bundle / "configs" / step.config],
            overrides,
            f"{step.out.parent.name}-{step.name}-{phase}",
            phase == "train",
        )
    if plan.folder == step.staging:
        _move_in(step)
    elif (status := outcome(step.out / "models", step.product)[1]) != "complete":
        raise StepError(f"{where}: training ended with status {status!r} ({step.metrics_file})")
    if plan.action == "resume":
        return "resumed"
    return "trained" if plan.reason == NOT_TRAINED else f"trained ({plan.reason})"


def teachers_stamp(teachers: list[dict[str, Any]]) -> str:
    """What the ensemble's evaluation is of: the teachers' checkpoints, not the selection file (re-written
    with a new date each run)."""
    return hashlib.sha256(json.dumps([t["sha256"] for t in teachers]).encode()).hexdigest()


TUNED = "test_tuned"  # the test evaluation with the post-processing tuned on validation (configs/tune.json)


def tuned_stamp(step: Step) -> str | None:
    """What a tuned evaluation is of: the model and its tuned post-processing (None before tuning)."""
    tuned = step.metrics.section("postprocessing")
    model_sha = file_sha256(step.model_file)
    if tuned.get("source_sha256") != model_sha:
        return None
    return model_sha + ":" + hashlib.sha256(json.dumps(tuned, sort_keys=True).encode()).hexdigest()


def plan_tuning(step: Step) -> tuple[str, str]:
    """(``current`` or ``would-tune``, why) for the post-processing tuning of a trained ``step``."""
    problem = model_problem(step.out / "models")
    if problem:
        return "would-tune", f"after training ({problem})"
    if tuned_stamp(step) is not None:
        return "current", "tuned on validation for this model"
    return "would-tune", "not tuned for this model yet"


def tune_step(runner: Runner, step: Step) -> str:
    """Tune the model's post-processing on the validation split (``configs/tune.json``: threshold, minimum
    area, lower threshold, flip TTA; written into its metrics.json) unless already done for this model."""
    problem = model_problem(step.out / "models")
    if problem:
        raise StepError(f"{step.out.parent.name}/{step.name}: {problem} ({step.model_file}); rerun to retrain it")
    if tuned_stamp(step) is not None:
        return "current"
    configs = [step.bundle / "configs" / c for c in ("train.json", "evaluate.json", "tune.json")]
    overrides = {**step.overrides, "eval_split": "validation"}
    runner.bundle(configs, overrides, f"{step.out.parent.name}-{step.name}-tune")
    if tuned_stamp(step) is None:
        raise StepError(
            f"{step.out.parent.name}/{step.name}: tuning wrote no postprocessing section ({step.metrics_file})"
        )
    tuned = step.metrics.section("postprocessing")
    return f"tuned (validation dice {tuned['validation_dice_default']:.3f} -> {tuned['validation_dice_tuned']:.3f})"


def _evaluation_stamp(step: Step, ensemble: bool, name: str) -> str | None:
    """What an evaluation is of: the ensemble's teachers, the model file, or (``TUNED``) the model with its
    tuned post-processing; None when there is nothing to evaluate yet."""
    if ensemble:
        return teachers_stamp(json.loads(Path(step.overrides["teachers_file"]).read_text())["teachers"])
    return tuned_stamp(step) if name == TUNED else file_sha256(step.model_file)


def plan_evaluation(
    step: Step, ensemble: bool = False, stamp: str | None = None, name: str = "test"
) -> tuple[str, str]:
    """(``current`` or ``would-evaluate``, why) for a trained ``step``; ``stamp``: the ensemble's teachers;
    ``name``: the evaluation (``test``, ``test_tuned`` or ``external_<NAME>``)."""
    if ensemble:
        if stamp is None:
            return "would-evaluate", "the teachers are selected first"
    else:
        problem = model_problem(step.out / "models")
        if problem:
            return "would-evaluate", f"after training ({problem})"
        stamp = _evaluation_stamp(step, False, name)
        if stamp is None:
            return "would-evaluate", "after tuning the post-processing on validation"
    recorded = step.metrics.evaluation(name, ensemble).get("source_sha256")
    if recorded == stamp:
        return "current", f"evaluated on {name} with this model"
    return "would-evaluate", "not evaluated yet" if recorded is None else "the model changed since its evaluation"


def evaluate_step(
    runner: Runner, step: Step, ensemble: bool = False, name: str = "test", data: dict[str, Any] | None = None
) -> str:
    """Evaluate the step's model (or the teacher ensemble) on the test split unless already done.

    ``name``/``data``: another evaluation, e.g. ``external_<NAME>`` with the data overrides of an external
    test set (its datalist's ``test`` split); recorded in metrics.json under ``name`` (``ensemble_<name>``).
    Every evaluation uses the default post-processing except ``test_tuned`` (``TUNED``): the test split with
    the post-processing tuned on validation (``tune_step`` first)."""
    if not ensemble:  # never a model that is not the file training saved
        problem = model_problem(step.out / "models")
        if problem:
            raise StepError(f"{step.out.parent.name}/{step.name}: {problem} ({step.model_file}); rerun to retrain it")
    stamp = _evaluation_stamp(step, ensemble, name)
    if stamp is None:
        raise StepError(f"{step.out.parent.name}/{step.name}: {name} needs the post-processing tuned first")
    if step.metrics.evaluation(name, ensemble).get("source_sha256") == stamp:
        return "current"
    configs = [step.bundle / "configs" / c for c in ("train.json", "evaluate.json")]
    if ensemble:
        configs.append(step.bundle / "configs" / "evaluate_ensemble.json")
    section = f"ensemble_{name}" if ensemble else name
    overrides = {**step.overrides, **(data or {}), "eval_split": "test", "eval_name": name}
    if not ensemble:
        overrides["use_tuned"] = name == TUNED
    runner.bundle(configs, overrides, f"{step.out.parent.name}-{step.name}-{section}")
    update_metrics_file(step.metrics_file, **{section: {**step.metrics.section(section), "source_sha256": stamp}})
    return "evaluated"


def train_and_evaluate(runner: Runner, step: Step, force: bool) -> str:
    """Both, for one run; what happened to each."""
    return f"{train_step(runner, step, force)}, {evaluate_step(runner, step)}"
