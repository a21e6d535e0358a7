"""MLflow tracking: MONAI's bundle ``--tracking`` with ``common/utils/mlflow_tracking.json`` (a local file store)
and ``run_pipeline.py --tracking mlflow``, read back with ``MlflowClient``.

What runs (about 2.5 minutes on 2 cores): every bundle's config combinations (train, evaluate, pretrain,
tune, evaluate_ensemble, inference) take the settings and each MLflow handler builds with its params; full
tracked trainings and evaluations of the baseline (the plain CLI, default store), ``mean_teacher`` (its own
engine; a store given by ``--tracking_uri``), ``rotation_pretrain`` (pre-training and training: two runs) and
``rotation_joint`` (through the pipeline's steps, as ``run_pipeline.py`` runs them). The whole protocol is not
run here (over 3 minutes even at 32 px; ``tests/test_pipeline.py`` runs it untracked): ``run_pipeline.py``'s own
part, the tracked runners and the report run, runs with the protocol stubbed, on a report of the real layout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlflow", reason="mlflow is not installed (mlflow-skinny in requirements.txt)")

from monai.bundle import ConfigWorkflow

import scripts.run_pipeline as run_pipeline_script
from common.utils.tracking import SETTINGS_FILE, LocalMLFlowHandler, local_client, mlflow_settings
from pipeline.runner import Runner
from pipeline.steps import Step, evaluate_step, output_overrides, train_step
from tests.conftest import REPO, copy_bundle, run_bundle, tiny_train_overrides

BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "train.json").is_file())
SEG_METRICS = {"dice", "dice_positive", "iou", "dice_hmean", "empty_accuracy"}
TRACKING = ["--tracking", str(SETTINGS_FILE)]


def tiny(dataset: Path, bundle: Path, epochs: int = 1) -> list[str]:
    """conftest's tiny training overrides at 32 px."""
    overrides = tiny_train_overrides(dataset, bundle, epochs)
    overrides[overrides.index("--image_size") + 1] = "32"
    return overrides


def evaluation(dataset: Path, bundle: Path) -> list[str]:
    """Overrides that evaluate the bundle copy's model on the tiny data (test split)."""
    return ["--bundle_root", str(bundle), "--dataset_dir", str(dataset), "--num_workers", "0"]


def config_sets(name: str) -> dict[str, list[str]]:
    """The config combinations a bundle is run with (the later files merged over the first)."""
    configs = REPO / "bundles" / name / "configs"
    sets = {"train": ["train.json"], "evaluate": ["train.json", "evaluate.json"], "inference": ["inference.json"]}
    for mixin in ("tune.json", "evaluate_ensemble.json"):
        if (configs / mixin).is_file():
            sets[mixin.removesuffix(".json")] = ["train.json", "evaluate.json", mixin]
    if (configs / "pretrain.json").is_file():
        sets["pretrain"] = ["pretrain.json"]
    return sets


def runs_by_name(store: Path, experiment: str) -> dict[str, list[Any]]:
    """The runs of ``experiment`` in the local store, by run name."""
    client = local_client(store)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {store}"
    runs: dict[str, list[Any]] = {}
    for run in client.search_runs([found.experiment_id]):
        runs.setdefault(run.info.run_name, []).append(run)
    return runs


def check_run(store: Path, run: Any, phase: str, params: dict[str, Any], metrics: set[str]) -> list[str]:
    """A finished run of ``phase`` with these params and (finite) metrics; its artifacts' paths."""
    assert run.info.status == "FINISHED" and run.data.tags["phase"] == phase
    assert {k: run.data.params.get(k) for k in params} == {k: str(v) for k, v in params.items()}
    assert metrics <= set(run.data.metrics), sorted(run.data.metrics)
    assert all(math.isfinite(v) for v in run.data.metrics.values()), run.data.metrics
    return [a.path for a in local_client(store).list_artifacts(run.info.run_id)]


@pytest.mark.parametrize("name", BUNDLES)
def test_every_config_combination_takes_the_tracking_settings(name: str, tiny_siim: Path, tmp_path: Path) -> None:
    settings = mlflow_settings()
    for label, files in config_sets(name).items():
        configs = REPO / "bundles" / name / "configs"
        workflow = ConfigWorkflow(
            config_file=[str(configs / f) for f in files],
            tracking=mlflow_settings(),
            bundle_root=str(tmp_path),
            dataset_dir=str(tiny_siim),
            output_dir=str(tmp_path / "eval"),  # (inference.json's is the masks folder)
        )
        parser, built = workflow.parser, []
        for role, ids in settings["handlers_id"].items():
            if ids["id"] not in parser:
                continue
            index = len(parser[ids["handlers"]]) - 1  # MONAI appends the handler to the engine's list
            handler = parser.get_parsed_content(f"{ids['handlers']}#{index}")
            assert isinstance(handler, LocalMLFlowHandler), (label, role)
            assert handler.client.tracking_uri == (tmp_path / "eval" / "mlruns").as_uri()
            if role != "evaluator":  # the bundle's settings, as params: plain values
                assert handler.experiment_param["epochs"] == parser.get_parsed_content("epochs")
                assert all(isinstance(v, (str, int, float, bool)) for v in handler.experiment_param.values())
            built.append(role)
        expected = {"evaluator"} if label == "inference" else {"trainer", "validator"}
        assert expected <= set(built), (label, built)
        assert ("pretrainer" in built) == (name.endswith("_pretrain") and label != "inference"), (label, built)


@pytest.mark.slow
def test_baseline_cli_tracks_training_and_evaluation_in_its_output_folder(tiny_siim: Path, tmp_path: Path) -> None:
    bundle = copy_bundle("baseline", tmp_path / "baseline")
    configs = bundle / "configs"
    run_bundle([configs / "train.json"], *tiny(tiny_siim, bundle, epochs=2), *TRACKING, cwd=tmp_path)
    evaluate = [configs / "train.json", configs / "evaluate.json"]
    run_bundle(evaluate, *evaluation(tiny_siim, bundle), *TRACKING, "--run_name", "test", cwd=tmp_path)

    store = bundle / "eval" / "mlruns"
    runs = runs_by_name(store, "monai_experiment")
    assert len(runs) == 2 and len(runs["test"]) == 1  # the validations joined the training's run
    training = next(r for name, (r, *_) in runs.items() if name != "test")
    params = {"epochs": 2, "max_epochs": 2, "image_size": 32, "batch_size": 4, "seed": 0}
    artifacts = check_run(store, training, "train", params, {"train_loss", "lr_group_0"} | SEG_METRICS)
    history = local_client(store).get_metric_history(training.info.run_id, "dice")
    assert sorted(m.step for m in history) == [1, 2]  # validation Dice per epoch
    assert len(artifacts) == 1 and artifacts[0].startswith("config_")  # the executed config
    artifacts = check_run(store, runs["test"][0], "evaluate", {"image_size": 32}, SEG_METRICS)
    assert len(artifacts) == 1 and artifacts[0].startswith("config_")
    evaluated = json.loads((bundle / "models" / "metrics.json").read_text())["test"]
    assert runs["test"][0].data.metrics["dice"] == pytest.approx(evaluated["dice"], abs=1e-4)


@pytest.mark.slow
def test_monai_plain_tracking_mlflow_keeps_a_local_sqlite_store(tiny_siim: Path, tmp_path: Path) -> None:
    """MONAI's own ``--tracking mlflow`` (default settings, no file of ours): train and evaluate write to
    ``<output_dir>/mlruns.db``, no server; read back with MlflowClient."""
    from mlflow.tracking import MlflowClient

    bundle = copy_bundle("baseline", tmp_path / "baseline")
    configs = bundle / "configs"
    run_bundle([configs / "train.json"], *tiny(tiny_siim, bundle, epochs=1), "--tracking", "mlflow", cwd=tmp_path)
    evaluate = [configs / "train.json", configs / "evaluate.json"]
    run_bundle(evaluate, *evaluation(tiny_siim, bundle), "--tracking", "mlflow", "--run_name", "test", cwd=tmp_path)
    client = MlflowClient(f"sqlite:///{bundle / 'eval' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("monai_experiment")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert len(runs) == 2 and "test" in runs
    training = next(r for name, r in runs.items() if name != "test")
    assert {"train_loss", "dice"} <= set(training.data.metrics)
    assert all(math.isfinite(v) for r in runs.values() for v in r.data.metrics.values())
    evaluated = json.loads((bundle / "models" / "metrics.json").read_text())["test"]
    assert runs["test"].data.metrics["dice"] == pytest.approx(evaluated["dice"], abs=1e-4)


@pytest.mark.slow
def test_mean_teacher_tracks_into_a_store_given_on_the_command_line(tiny_siim: Path, tmp_path: Path) -> None:
    bundle = copy_bundle("mean_teacher", tmp_path / "mean_teacher")
    configs, store = bundle / "configs", tmp_path / "store"
    where = [*TRACKING, "--tracking_uri", str(store), "--experiment_name", "mt"]
    train = [*tiny(tiny_siim, bundle), "--labelled_fraction", "0.5"]
    run_bundle([configs / "train.json"], *train, *where, "--run_name", "fit", cwd=tmp_path)
    evaluate = [configs / "train.json", configs / "evaluate.json"]
    run_bundle(evaluate, *evaluation(tiny_siim, bundle), *where, "--run_name", "test", cwd=tmp_path)

    runs = runs_by_name(store, "mt")
    assert set(runs) == {"fit", "test"} and all(len(r) == 1 for r in runs.values())
    check_run(store, runs["fit"][0], "train", {"labelled_fraction": 0.5, "epochs": 1}, {"train_loss"} | SEG_METRICS)
    check_run(store, runs["test"][0], "evaluate", {"image_size": 32}, SEG_METRICS)


@pytest.mark.slow
def test_pretraining_and_training_are_two_runs(tiny_siim: Path, tmp_path: Path) -> None:
    bundle = copy_bundle("rotation_pretrain", tmp_path / "rotation_pretrain")
    overrides = [*tiny(tiny_siim, bundle), "--pretrain_epochs", "1", "--labelled_fraction", "0.5"]
    run_bundle([bundle / "configs" / "train.json"], *overrides, *TRACKING, "--run_name", "fit", cwd=tmp_path)

    store = bundle / "eval" / "mlruns"
    fit = runs_by_name(store, "monai_experiment")["fit"]
    phases = {r.data.tags["phase"]: r for r in fit}
    assert len(fit) == 2 and set(phases) == {"pretrain", "train"}
    check_run(store, phases["pretrain"], "pretrain", {"max_epochs": 1}, {"aux_loss"})
    check_run(store, phases["train"], "train", {"epochs": 1}, {"train_loss"} | SEG_METRICS)


@pytest.mark.slow
def test_pipeline_steps_are_runs_named_as_their_logs(tiny_siim: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    overrides = {"dataset_dir": str(tiny_siim), "labelled_fraction": 0.5, "image_size": 32, "batch_size": 4}
    overrides |= {"num_workers": 0, "epochs": 1}
    step_out = out / "seed0" / "rotation_joint"
    overrides |= output_overrides(step_out)  # as the protocol's steps: never the bundle's own models/
    step = Step("rotation_joint", REPO / "bundles" / "rotation_joint", step_out, overrides)
    runner = Runner(1, 1, out / "logs", tracking_dir=out)
    assert train_step(runner, step, force=False) == "trained"
    assert evaluate_step(runner, step) == "evaluated"

    store = out / "mlruns"
    runs = runs_by_name(store, "study")
    assert set(runs) == {"seed0-rotation_joint-train", "seed0-rotation_joint-test"}
    training, testing = runs["seed0-rotation_joint-train"], runs["seed0-rotation_joint-test"]
    assert len(training) == len(testing) == 1
    params = {"labelled_fraction": 0.5, "image_size": 32, "epochs": 1, "ckpt_dir": str(step.staging / "models")}
    metrics = {"train_loss", "seg_loss", "aux_loss", "aux_loss_rotation"} | SEG_METRICS
    assert check_run(store, training[0], "train", params, metrics) == ["seed0-rotation_joint-train.config.json"]
    assert check_run(store, testing[0], "evaluate", {"image_size": 32}, SEG_METRICS) == [
        "seed0-rotation_joint-test.config.json"
    ]
    assert (out / "logs" / "seed0-rotation_joint-train.config.json").is_file()


def fake_report(out: Path) -> None:
    """results.json (the layout pipeline.report writes), report.md and a figure."""
    stat = {"mean": 0.5, "std": 0.0, "n": 1}
    summary = {
        "baseline": {"test_dice": stat, "val_dice": stat, "chosen_modes": ["joint"], "blank_seeds": []},
        "student (distill)": {"test_dice": {"mean": 0.75, "std": 0.05, "n": 2}, "test_iou": {"mean": None, "n": 0}},
    }
    settings = {"dataset_dir": "demo_data/siim", "scale": "demo", "folds": None, "tasks": ["rotation"]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"settings": settings, "summary": summary}))
    (out / "report.md").write_text("# report\n")
    (out / "test_dice.png").write_bytes(b"\x89PNG\r\n\x1a\n")


def test_run_pipeline_tracks_its_runners_and_logs_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Path | None] = []

    def protocol(**arguments: Any) -> int:
        seen.append(Path(arguments["out"]) if arguments["tracking"] else None)
        if not arguments["dry_run"]:
            fake_report(Path(arguments["out"]))
        return 0

    monkeypatch.setattr(run_pipeline_script, "run_protocol", protocol)
    dry = tmp_path / "dry"
    assert run_pipeline_script.main(["--out", str(dry), "--tracking", "mlflow", "--dry-run"]) == 0
    out = tmp_path / "run"
    assert run_pipeline_script.main(["--out", str(out), "--tracking", "mlflow"]) == 0
    assert seen == [None, out] and not dry.exists()

    store = out / "mlruns"
    (report,) = runs_by_name(store, "run")["report"]
    params = {"dataset_dir": "demo_data/siim", "scale": "demo", "tasks": '["rotation"]'}
    assert "folds" not in report.data.params and "--tracking mlflow" in report.data.tags["command"]
    artifacts = check_run(store, report, "report", params, set())
    assert sorted(artifacts) == ["report.md", "results.json", "test_dice.png"]
    assert report.data.metrics == {
        "baseline/test_dice": 0.5,
        "baseline/val_dice": 0.5,
        "student_distill/test_dice": 0.75,
        "student_distill/test_dice_std": 0.05,
    }
