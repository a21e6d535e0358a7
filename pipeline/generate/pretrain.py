"""The pre-training variant: an auxiliary-only phase whose U-Net weights seed the baseline recipe."""

from __future__ import annotations

import copy
from typing import Any

from pipeline.generate.configs import aux_blocks, average, generated, put, settings, tasks_expr
from pipeline.generate.sources import load_baseline
from pipeline.generate.variants import Variant

PRETRAIN_STATE = {
    "model": "@pretrain#network",
    "optimizer": "@pretrain#optimizer",
    "lr_scheduler": "@pretrain#lr_scheduler",
    "trainer": "@pretrain#trainer",
    "random_state": "@pretrain#random_state",
}
PRETRAIN_RESUMABLE = "@resume and common.utils.bundle.has_checkpoint(@ckpt_dir, 'pretrain_')"
FINETUNE_RESUMABLE = "@resume and common.utils.bundle.has_checkpoint(@ckpt_dir)"
BASELINE_LOADER_STEP = "$@train#checkpoint_loader.attach(@train#trainer) if @resume else None"
RUN_PRETRAINING = (
    "$common.training.engines.run_pretraining(@pretrain#trainer, @pretrain#seg_net, @pretrained_file, @metrics_file)"
)


def pretrain_block() -> dict[str, Any]:
    """The pre-training phase: its own copy of the U-Net with the task heads, optimiser and trainer."""
    handlers = [
        {"_target_": "LrScheduleHandler", "lr_scheduler": "@pretrain#lr_scheduler", "print_lr": False},
        {"_target_": "StatsHandler", "_disabled_": "@non_main_rank", "iteration_log": False},
        {
            "_target_": "TensorBoardStatsHandler",
            "_disabled_": "@non_main_rank",
            "log_dir": "$os.path.join(@log_dir, 'pretrain')",
            "iteration_log": False,
        },
    ]
    latest = f"common.utils.bundle.latest_checkpoint(@ckpt_dir, 'pretrain_') if {PRETRAIN_RESUMABLE} else ''"
    return {
        "seg_net": "$copy.deepcopy(@network_def).to(@device)",
        "network": {
            "_target_": "common.training.networks.MultiTaskUNet",
            "seg_net": "@pretrain#seg_net",
            "tasks": tasks_expr(),
        },
        "optimizer": {
            "_target_": "torch.optim.AdamW",
            "params": "$@pretrain#network.parameters()",
            "lr": "@pretrain_learning_rate",
            "weight_decay": "@weight_decay",
        },
        "lr_scheduler": {
            "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
            "optimizer": "@pretrain#optimizer",
            "T_max": "@pretrain_epochs",
        },
        "key_metric": {"aux_loss": average("aux_loss")},
        "handlers": handlers,
        # per-epoch resumable state of the phase (network with heads, optimiser, schedule, epoch, random
        # streams), next to the fine-tuning checkpoints under another prefix; `--resume true` continues
        # either phase
        "random_state": {"_target_": "common.training.rng.RandomState", "engines": ["@pretrain#trainer"]},
        "checkpoint_saver": {
            "_target_": "CheckpointSaver",
            "_disabled_": "@non_main_rank",
            "save_dir": "@ckpt_dir",
            "file_prefix": "pretrain",
            "save_dict": PRETRAIN_STATE,
            "save_interval": 1,
            "n_saved": 1,
        },
        "checkpoint_loader": {
            "_target_": "CheckpointLoader",
            "_disabled_": f"$not ({PRETRAIN_RESUMABLE})",
            "load_path": f"${latest}",
            "load_dict": PRETRAIN_STATE,
            "map_location": "@device",
        },
        "trainer": {
            "_target_": "common.training.engines.PretextTrainer",
            "device": "@device",
            "max_epochs": "@pretrain_epochs",
            "train_data_loader": "@aux#dataloader",
            "network": "@pretrain#network",
            "optimizer": "@pretrain#optimizer",
            "task_weights": "@aux_weights",
            "pretext_seed": "@seed",
            "key_train_metric": "@pretrain#key_metric",
            "metric_cmp_fn": "$lambda current, best: current < best",
            "train_handlers": "@pretrain#handlers",
            "precision": "@precision",
            "compile": "@compile",
        },
    }


def pretrain_checkpointing() -> list[str]:
    """Attach the pre-training phase's per-epoch saver, and its loader when resuming that phase."""
    return [
        "$common.utils.bundle.require_resumable(@ckpt_dir, ['', 'pretrain_']) if @resume else None",
        "$@pretrain#checkpoint_saver.attach(@pretrain#trainer) if not @non_main_rank else None",
        f"$@pretrain#checkpoint_loader.attach(@pretrain#trainer) if {PRETRAIN_RESUMABLE} else None",
    ]


def with_pretraining(run: list[str]) -> list[str]:
    """The baseline's run steps preceded by the pre-training (when needed) and the weight hand-off;
    fine-tuning resumes only when it has a checkpoint (the interrupted phase may have been the
    pre-training)."""
    run_if_needed = RUN_PRETRAINING + " if @force_pretrain or not os.path.isfile(@pretrained_file) else None"
    # loaded in place at run time (not when the network is built), so the workflow initialises and
    # passes its property checks before any pre-training exists; a resume checkpoint loads over it
    load = "$common.training.networks.with_pretrained(@network, @pretrained_file)"
    resume_step = f"$@train#checkpoint_loader.attach(@train#trainer) if {FINETUNE_RESUMABLE} else None"
    if BASELINE_LOADER_STEP not in run:
        raise ValueError(f"the baseline's run list no longer has {BASELINE_LOADER_STEP!r}: update pipeline/generate")
    finetune = [resume_step if step == BASELINE_LOADER_STEP else step for step in run]
    return [*pretrain_checkpointing(), run_if_needed, load, *finetune]


def pretrain_train(variant: Variant) -> dict[str, Any]:
    """Baseline train.json preceded by an auxiliary-only phase whose U-Net weights seed the network."""
    cfg = load_baseline("train.json")
    cfg["imports"] = [*cfg["imports"], "$import copy"]
    aux_blocks(cfg, variant)
    settings(
        cfg,
        {
            "pretrain_epochs": 20,
            "pretrain_learning_rate": "@learning_rate",
            "pretrained_file": "$os.path.join(@ckpt_dir, 'pretrained.pt')",
            "force_pretrain": False,
        },
    )
    put(cfg, {"pretrain": pretrain_block()}, before="train")
    cfg["run"] = with_pretraining(cfg["run"])
    loader = cfg["train"]["checkpoint_loader"]
    loader["_disabled_"] = f"$not ({FINETUNE_RESUMABLE})"
    loader["load_path"] = f"$common.utils.bundle.latest_checkpoint(@ckpt_dir) if {FINETUNE_RESUMABLE} else ''"
    return generated(cfg, "train.json", variant.name, variant.summary)


def pretrain_only(train_cfg: dict[str, Any], variant: Variant) -> dict[str, Any]:
    """pretrain.json: the same configuration, running the pre-training phase alone."""
    cfg = copy.deepcopy(train_cfg)
    cfg.pop("_generated_", None)
    record = "$common.utils.metrics.record_pretrained(@metrics_file, @pretrained_file) if not @non_main_rank else None"
    cfg["run"] = [*pretrain_checkpointing(), RUN_PRETRAINING, record]
    return generated(cfg, "train.json", variant.name, f"the {', '.join(variant.tasks)} pre-training phase alone")
