"""One bundle run of the protocol: train it (resumable) and evaluate it, each only when not already current.

A training step is skipped when its ``metrics.json`` says ``complete`` and records the same fingerprint
(bundle configs + overrides + the extra facts: datalist content, for the student the teachers' sha256);
an interrupted step with a matching fingerprint and a ``checkpoint_epoch=N.pt`` continues with
``--resume true``; an evaluation is skipped when its model file is unchanged. Code changes are not part
of the fingerprint: pass ``force`` after changing ``common``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.utils.io import file_sha256
from common.utils.metrics import RunMetrics, update_metrics_file
from pipeline.runner import Runner


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

    @property
    def metrics(self) -> RunMetrics:
        """The run's ``metrics.json`` as it is now (empty before training)."""
        return RunMetrics.read(self.metrics_file)


def output_overrides(out: Path) -> dict[str, str]:
    """Where one run writes its models, logs and evaluation outputs (never inside the bundle)."""
    return {"ckpt_dir": str(out / "models"), "log_dir": str(out / "logs"), "output_dir": str(out / "eval")}


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


def train_step(runner: Runner, step: Step, force: bool) -> str:
    """Train one bundle unless its outputs are current; return what happened."""
    current = fingerprint(step)
    metrics = step.metrics
    same = not force and metrics.fingerprint == current
    if same and metrics.complete and step.model_file.is_file():
        return "current"
    resume = same and any((step.out / "models").glob("*checkpoint_epoch=*.pt"))  # either phase
    if not resume and step.metrics_file.exists() and not runner.dry_run:
        for old in (step.out / "models").glob("*"):  # another config or data: start clean
            old.unlink()
    overrides = {**step.overrides, "pipeline_fingerprint": current, "resume": resume}
    runner.bundle(
        [step.bundle / "configs" / "train.json"], overrides, f"{step.out.parent.name}-{step.name}-train", True
    )
    return "resumed" if resume else "trained"


def evaluate_step(runner: Runner, step: Step, ensemble: bool = False) -> str:
    """Evaluate the step's model (or the teacher ensemble) on the test split unless already done."""
    if ensemble:  # the teachers' checkpoints, not the selection file (re-written with a new date each run)
        teachers = json.loads(Path(step.overrides["teachers_file"]).read_text())["teachers"]
        stamp = hashlib.sha256(json.dumps([t["sha256"] for t in teachers]).encode()).hexdigest()
    else:
        stamp = file_sha256(step.model_file)
    if step.metrics.evaluation("test", ensemble).get("source_sha256") == stamp:
        return "current"
    configs = [step.bundle / "configs" / c for c in ("train.json", "evaluate.json")]
    if ensemble:
        configs.append(step.bundle / "configs" / "evaluate_ensemble.json")
    section = "ensemble_test" if ensemble else "test"
    runner.bundle(configs, {**step.overrides, "eval_split": "test"}, f"{step.out.parent.name}-{step.name}-{section}")
    update_metrics_file(step.metrics_file, **{section: {**step.metrics.section(section), "source_sha256": stamp}})
    return "evaluated"


def train_and_evaluate(runner: Runner, step: Step, force: bool) -> str:
    """Both, for one run; what happened to each."""
    return f"{train_step(runner, step, force)}, {evaluate_step(runner, step)}"
