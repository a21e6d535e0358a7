"""The stage-2 distillation bundle's configs: the baseline student trained against the teacher ensemble."""

from __future__ import annotations

import copy
from typing import Any

from pipeline.generate.configs import add_settings_check, average, derived_metadata, generated, put, settings
from pipeline.generate.sources import load_baseline

DISTILL = "distill"
SUMMARY = "DistillationTrainer, the student learns from the teacher ensemble's soft targets and the labels"


def with_soft_key(augmentations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The baseline's augmentations, moving the soft target wherever they move the label."""
    out = copy.deepcopy(augmentations)
    for aug in out:
        keys = aug.get("keys")
        if isinstance(keys, list) and "label" in keys:
            aug["keys"] = [*keys, "soft"]
            if isinstance(aug.get("mode"), list):
                aug["mode"] = [*aug["mode"], aug["mode"][keys.index("image")]]  # probabilities: like the image
            aug["allow_missing_keys"] = True
    return out


def distill_run_prefix() -> list[str]:
    """What runs before the baseline's ``run`` steps: check the selection, then set up the soft targets."""
    prepare = (
        "$common.distill.soft_targets.prepare_soft_targets(@soft_targets, @ensemble, @soft_target_cache, "
        "@train#dataset.data, '' if @non_main_rank else @metrics_file, "
        "{'kd_loss': @kd_loss_kind, 'temperature': @temperature, 'alpha': @alpha, 'use_unlabelled': @use_unlabelled, "
        "'labelled_share': @labelled_share, 'teacher_top_k': @teacher_top_k, "
        "'teacher_combine': @teacher_combine}, "
        "@train#trainer)"
    )
    check = "$common.distill.teachers.exit_unless_selection(@teachers_file, @teacher_tasks, @teacher_top_k)"
    return [check, prepare]


def distill_train() -> dict[str, Any]:
    """Baseline train.json with the student trained against the teacher ensemble (DistillationTrainer)."""
    cfg = load_baseline("train.json")
    settings(
        cfg,
        {
            "teachers_file": "$os.path.join(@ckpt_dir, 'teachers.json')",
            "teacher_tasks": [],
            "teacher_top_k": 0,
            "teacher_combine": "mean",
            "soft_targets": "cached",
            "kd_loss_kind": "bce",
            "temperature": 1.0,
            "alpha": 1.0,
            "use_unlabelled": True,
            "labelled_share": "natural",
        },
    )
    add_settings_check(cfg, ["labelled_share", "teacher_top_k", "teacher_combine"])
    ensemble = (
        "$common.distill.teachers.load_ensemble(@teachers_file, @network_def, @device, @temperature, "
        "@teacher_tasks, @teacher_top_k, @teacher_combine)"
    )
    put(cfg, {"ensemble": ensemble}, after="network")
    distill_loss = {
        "_target_": "common.training.kd.DistillationLoss",
        "seg_loss": "@loss",
        "kind": "@kd_loss_kind",
        "temperature": "@temperature",
        "alpha": "@alpha",
    }
    put(cfg, {"distill_loss": distill_loss}, after="loss")
    soft_target_cache = {
        "_target_": "common.distill.soft_targets.SoftTargetCache",
        "transform": "@load_transforms",
        **{key: f"@{key}" for key in ("cache_dir", "device", "batch_size", "num_workers")},  # the same-named ids
    }
    put(cfg, {"soft_target_cache": soft_target_cache}, after="load_transforms")
    train = cfg["train"]
    train["augmentations"] = with_soft_key(train["augmentations"])
    targets = {
        "mark_labelled": {"_target_": "common.data.transforms.MarkLabelledd"},
        "soft_target_loader": {
            "_target_": "common.distill.soft_targets.LoadSoftTargetd",
            "cache": "@soft_target_cache",
        },
    }
    put(train, targets, after="augmentations")
    train["preprocessing"]["transforms"] = (
        "$@load_transforms + [@train#mark_labelled] "
        "+ ([@train#soft_target_loader] if @soft_targets == 'cached' else []) + @train#augmentations"
    )
    train["dataset"]["data"] = "$common.data.datalist.distillation_items(@datalist, @use_unlabelled)"
    if not train["sampler"].endswith(")"):
        raise ValueError("the baseline's train#sampler is no longer one labelled_sampler(...) call")
    train["sampler"] = train["sampler"][:-1] + ", labelled_share=@labelled_share)"
    put(
        train,
        {"additional_metrics": {"kd_loss": average("kd_loss"), "seg_loss": average("seg_loss")}},
        after="key_metric",
    )
    train["trainer"].update(
        _target_="common.training.engines.DistillationTrainer",
        loss_function="@distill_loss",
        additional_metrics="@train#additional_metrics",
    )
    cfg["run"] = [*distill_run_prefix(), *cfg["run"]]
    return generated(cfg, "train.json", DISTILL, SUMMARY)


def distill_multi_gpu() -> dict[str, Any]:
    """The baseline's multi-GPU mixin with the distillation set-up ahead of its run steps."""
    cfg = load_baseline("multi_gpu_train.json")
    cfg["run"] = [*distill_run_prefix(), *cfg["run"]]
    return generated(cfg, "multi_gpu_train.json", DISTILL, "the distillation set-up before the baseline's run steps")


def evaluate_ensemble() -> dict[str, Any]:
    """Mixin over train.json + evaluate.json: evaluate the plain teacher ensemble (T = 1) instead of the student."""
    evaluate = load_baseline("evaluate.json")
    handlers = [h for h in evaluate["validate#handlers"] if not h["_target_"].endswith("CheckpointLoader")]
    for h in handlers:
        if h["_target_"].endswith("MetricsSaver"):
            h["save_dir"] = "$os.path.join(@output_dir, 'ensemble_' + @eval_name)"
        if h["_target_"].endswith("EvaluationMetricsWriter"):
            h["section"] = "$'ensemble_' + @eval_name"
            h["checkpoint"] = "@teachers_file"
    cfg = {
        "network": (
            "$common.distill.teachers.load_ensemble(@teachers_file, @network_def, @device, 1.0, @teacher_tasks, "
            "@teacher_top_k, @teacher_combine)"
        ),
        "validate#handlers": handlers,
        "use_tuned": False,  # the tuned post-processing next to model.pt is the student's, not the ensemble's
    }
    return generated(cfg, "evaluate.json", DISTILL, "evaluate the plain teacher ensemble instead of the student")


def distill_metadata() -> dict[str, Any]:
    """Baseline metadata for the distilled student."""
    return derived_metadata(
        DISTILL,
        "Pneumothorax segmentation, stage-2 distilled student (2D U-Net)",
        "2D U-Net student distilled from the ensemble of the selected stage-1 teachers (mean of their sigmoid "
        "probabilities; teacher_combine max: their maximum) "
        "plus the segmentation loss on the labelled images: the final model of the two-stage "
        "multi-task self-supervised method. The exported model is the plain U-Net.",
        "ensemble knowledge distillation",
    )
