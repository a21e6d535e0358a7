"""The ``mean_teacher`` bundle's configs: the semi-supervised competitor (Tarvainen & Valpola 2017).

The baseline with ``common.training.mean_teacher.MeanTeacherTrainer``: the segmentation loss on the labelled
batch plus a ramped-up consistency between the student and an EMA teacher (ignite's ``EMAHandler``) on that
batch and an unlabelled one, drawn from every training image like the joint bundles' auxiliary batches
(with the baseline's augmentations, image only). Validation and ``model.pt`` use the teacher
(``evaluate_ema``), which is a plain U-Net like the student.
"""

from __future__ import annotations

import copy
from typing import Any

from pipeline.generate.configs import (
    ALL_TRAINING_IMAGES,
    add_settings_check,
    aux_trainer,
    average,
    checkpoint_also,
    ddp,
    derived_metadata,
    generated,
    put,
    settings,
    shard_aux,
)
from pipeline.generate.sources import load_baseline

MEAN_TEACHER = "mean_teacher"
SUMMARY = (
    "MeanTeacherTrainer, the segmentation loss + a ramped-up consistency with an EMA teacher on labelled and "
    "unlabelled images"
)
MULTI_GPU_SUMMARY = "DistributedDataParallel around the student, unlabelled batches sharded over the ranks"
PAPER = (
    "Tarvainen and Valpola, Mean teachers are better role models: Weight-averaged consistency targets improve "
    "semi-supervised deep learning results, NeurIPS 2017"
)

#: the bundle's own settings: name -> (default as written in train.json, what it is; the README's table)
SETTINGS: dict[str, tuple[Any, str]] = {
    "consistency_weight": (1.0, "weight of the consistency term once ramped up"),
    "rampup_epochs": (
        "$@epochs / 4",
        "epochs of the sigmoid ramp-up `exp(-5 (1 - t/T)^2)` of that weight (fractional by iteration; "
        "0: full weight from the start); a quarter of the run by default",
    ),
    "ema_decay": (0.99, "the teacher's decay per step (ignite's EMA momentum is `1 - ema_decay`), in (0, 1)"),
    "consistency_noise": (0.05, "std of the Gaussian noise added to each network's input (images are in [0, 1])"),
    "evaluate_ema": (True, "validate, select and save (`model.pt`) the EMA teacher; `False`: the student"),
    "unlabelled_batch_size": ("@batch_size", "unlabelled images per step, besides the labelled batch"),
}


def image_only(augmentations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The baseline's augmentations applied to the image alone (the unlabelled items have no label)."""
    out = []
    for aug in copy.deepcopy(augmentations):
        keys = aug.get("keys")
        if isinstance(keys, list):
            if "image" not in keys:
                continue
            if isinstance(aug.get("mode"), list):
                aug["mode"] = aug["mode"][keys.index("image")]
            aug["keys"] = "image"
        out.append(aug)
    return out


def mean_teacher_train() -> dict[str, Any]:
    """Baseline train.json with the Mean Teacher trainer, its EMA teacher and its unlabelled loader."""
    cfg = load_baseline("train.json")
    settings(cfg, {name: default for name, (default, _) in SETTINGS.items()})
    teacher = {
        "ema_handler": {
            "_target_": "ignite.handlers.EMAHandler",
            "model": "@network",
            "momentum": "$1.0 - @ema_decay",
            "handle_buffers": "ema_train",
        },
        "teacher": "$@ema_handler.ema_model",
        "evaluated_network": "$@teacher if @evaluate_ema else @network",
    }
    put(cfg, teacher, after="network")
    train = cfg["train"]
    dataset = copy.deepcopy(train["dataset"])
    dataset["data"] = ALL_TRAINING_IMAGES
    dataset["transform"] = {"_target_": "Compose", "transforms": "$@load_transforms + @aux#augmentations"}
    loader = copy.deepcopy(train["dataloader"])
    loader.pop("sampler", None)  # the labelled loader's sampler draws labelled items
    loader.update(dataset="@aux#dataset", batch_size="@unlabelled_batch_size", shuffle=True, drop_last=True)
    aux = {"augmentations": image_only(train["augmentations"]), "dataset": dataset, "dataloader": loader}
    put(cfg, {"aux": aux}, after="load_transforms")

    writer = next(h for h in train["handlers"] if h["_target_"] == "common.training.handlers.TrainingMetricsWriter")
    if not writer["extra"].endswith("}"):
        raise ValueError("the baseline's TrainingMetricsWriter extra is no longer a dict expression")
    # the images the consistency term draws its unlabelled batches from
    writer["extra"] = writer["extra"][:-1] + ", 'unlabelled_stream_images': len(@aux#dataset#data)}"
    # the resumable checkpoints carry the teacher (its weights and its own batch-norm statistics)
    checkpoint_also(train, {"teacher": "@teacher"})
    losses = ("seg_loss", "consistency", "consistency_weight")
    put(train, {"additional_metrics": {k: average(k) for k in losses}}, after="key_metric")
    aux_trainer(
        train,
        "common.training.mean_teacher.MeanTeacherTrainer",
        ema_handler="@ema_handler",
        consistency_weight="@consistency_weight",
        rampup_epochs="@rampup_epochs",
        noise_std="@consistency_noise",
        noise_seed="@seed",
    )

    validate = cfg["validate"]
    validate["evaluator"]["network"] = "@evaluated_network"
    best = [h for h in validate["handlers"] if h["_target_"] == "CheckpointSaver" and h.get("save_key_metric")]
    if len(best) != 1 or list(best[0]["save_dict"]) != ["model"]:
        raise ValueError("the baseline's validation no longer has one key-metric CheckpointSaver of 'model'")
    best[0]["save_dict"]["model"] = "@evaluated_network"
    add_settings_check(cfg, list(SETTINGS))
    return generated(cfg, "train.json", MEAN_TEACHER, SUMMARY)


def mean_teacher_evaluate() -> dict[str, Any]:
    """The baseline's evaluate mixin, evaluating ``model.pt`` in the plain U-Net (``network``) whichever
    network training validated (train.json's evaluator runs ``evaluated_network``)."""
    cfg = load_baseline("evaluate.json")
    put(cfg, {"validate#evaluator#network": "@network"}, after="validate#handlers")
    what = "model.pt evaluated in the plain U-Net, whichever network training saved"
    return generated(cfg, "evaluate.json", MEAN_TEACHER, what)


def mean_teacher_multi_gpu() -> dict[str, Any]:
    """The baseline's multi-GPU mixin with DDP around the student only (the teacher takes no gradient and
    follows the synchronised student on every rank) and the unlabelled loader sharded over the ranks."""
    cfg = load_baseline("multi_gpu_train.json")
    put(cfg, {"train#trainer#network": ddp("@network")}, after="network")
    cfg.pop("network")  # the EMA handler, the evaluator and the savers keep the plain U-Net
    shard_aux(cfg)
    return generated(cfg, "multi_gpu_train.json", MEAN_TEACHER, MULTI_GPU_SUMMARY)


def mean_teacher_metadata() -> dict[str, Any]:
    """Baseline metadata for the Mean Teacher bundle."""
    meta = derived_metadata(
        MEAN_TEACHER,
        "Pneumothorax segmentation, Mean Teacher (semi-supervised 2D U-Net)",
        "2D U-Net trained with Mean Teacher: the segmentation loss on the labelled images plus a ramped-up "
        "consistency (MSE of sigmoid probabilities under different input noise) between the network and an "
        "exponential moving average of its weights, on labelled and unlabelled training images. The "
        "semi-supervised competitor of the two-stage multi-task self-supervised method. The exported model is "
        "the plain U-Net (by default the moving-average teacher).",
        MEAN_TEACHER,
    )
    meta["references"] = [*meta["references"], PAPER]
    return meta
