"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017) for segmentation: the semi-supervised competitor.

Every iteration takes the labelled batch of the trainer's data loader and an unlabelled batch from
``aux_data_loader`` (all training images, labels stripped, cycled like ``MultiTaskTrainer``'s). Both go
through the student (the U-Net being trained) and the teacher (an exponential moving average of the
student's weights) as one batch, each network seeing its own Gaussian noise on the input; the loss is

    L = L_seg(student, label) on the labelled images + w(t) * MSE(sigmoid(student), sigmoid(teacher)) on all,

with the teacher under ``torch.no_grad`` (no gradient reaches it: it only follows the student) and the
sigmoid ramp-up ``w(t) = consistency_weight * exp(-5 (1 - min(t, T) / T)^2)`` (t in epochs, fractional by
iteration; T = ``rampup_epochs``; the paper's schedule, from ``exp(-5)`` of the weight at t = 0 to all of it
at T).

The teacher is ignite's ``EMAHandler.ema_model`` (ignite 0.5), attached by the trainer at ITERATION_COMPLETED,
after the optimiser step: ``teacher = (1 - m) * teacher + m * student`` with ignite's momentum ``m`` (the weight
of the new value, ``1 - ema_decay``). The trainer sets ``m`` every iteration as the reference implementation
does, ``m = max(1 - ema_decay, 1 / (t + 1))`` after ``t`` steps (``ema_warmup``): the teacher is the plain mean
of every student so far until that mean spans more steps than the decay does. ``m`` is a function of the
iteration count, which the trainer's checkpoint restores: no scheduler state to carry (ignite's own
``momentum_warmup`` counts its calls and would restart on resume).

Batch norm (``EMAHandler(handle_buffers=...)``): with ``"ema_train"`` (the bundle's setting, and what the
reference implementation does) the teacher runs in train mode, normalising with the batch's statistics,
and its running statistics are its own: updated by its forward passes here (BN momentum), averaged by
nothing, read when the teacher is evaluated. With ``"copy"`` ignite makes the teacher's buffers *the
student's* tensors (the same storage) and the teacher runs in eval mode (the student's running statistics);
``"update"`` averages the buffers like the weights. The trainer puts the teacher in the mode its handler
implies at every iteration (the evaluator leaves it in eval mode). The student's batch norm sees the
labelled and the unlabelled images as one batch, like the teacher's. Under DistributedDataParallel (around
the student only) the teacher's weights are the same on every rank, its ``ema_train`` running statistics
are each rank's own (rank 0's are saved; each rank validates its shard with its own).

Perturbations: the loaders' augmentations (the same geometric view for student and teacher, so nothing to
undo before comparing) plus Gaussian noise of std ``noise_std`` on the input, independent for the two
networks, drawn on the training device from the engine's seeded generator (``objective``, whose state the
resumable checkpoints carry, ``common.training.rng.RandomState``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Events
from ignite.handlers import EMAHandler
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from common.training.base import Trainer, float32
from common.training.engines import AuxiliaryBatches, SeededObjective, _images

EMA_MOMENTUM = "ema_momentum"  # the engine state attribute the EMA handler reads its momentum from


def sigmoid_rampup(epoch: float, rampup_epochs: float) -> float:
    """``exp(-5 (1 - min(epoch, T) / T)^2)``: ``exp(-5)`` (about 0.007) at epoch 0, rising to 1 at ``T``
    (Laine & Aila 2017, Tarvainen & Valpola 2017); 1 throughout when ``T`` is 0."""
    if rampup_epochs <= 0:
        return 1.0
    phase = 1.0 - min(max(epoch, 0.0), rampup_epochs) / rampup_epochs
    return math.exp(-5.0 * phase * phase)


def ema_momentum(steps: int, momentum: float, warmup: bool = True) -> float:
    """ignite's EMA momentum (the new value's weight, ``1 - ema_decay``) for the update after ``steps``
    optimiser steps; with ``warmup`` at least ``1 / (steps + 1)``, so that the teacher is the mean of the
    initial network and every student so far until that mean spans more steps than ``1 / momentum``."""
    return max(momentum, 1.0 / (steps + 1)) if warmup else momentum


class ConsistencyObjective(SeededObjective):
    """The perturbation of the two views and the consistency between the networks' probabilities.

    Args:
        noise_std: std of the Gaussian noise added to each view's input (0: the views are the input itself).
        seed: seed of the noise generator.
    """

    def __init__(self, noise_std: float = 0.05, seed: int = 0) -> None:
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)
        super().__init__(seed)

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's and the teacher's input: ``images`` plus independent noise each (one draw for both)."""
        if self.noise_std == 0:
            return images, images
        noise = torch.randn(
            (2, *images.shape), generator=self.generator(images.device), device=images.device, dtype=images.dtype
        )
        return images + self.noise_std * noise[0], images + self.noise_std * noise[1]

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Mean squared difference of the sigmoid probabilities (float32; the teacher's side is a constant)."""
        return F.mse_loss(torch.sigmoid(student_logits.float()), torch.sigmoid(teacher_logits.detach().float()))


class MeanTeacherTrainer(AuxiliaryBatches, Trainer):
    """``L_seg + w(t) * consistency(student, EMA teacher)`` on a labelled and an unlabelled batch (see the module).

    Args:
        network: the student (the plain U-Net, or DistributedDataParallel around it).
        loss_function: the segmentation loss (labelled images).
        aux_data_loader: loader over the unlabelled images (all training images, labels stripped), cycled;
            every training epoch starts a fresh pass (``AuxiliaryBatches``).
        ema_handler: ignite's ``EMAHandler`` over the student, built with ``momentum = 1 - ema_decay``; its
            ``ema_model`` is the teacher. The trainer attaches it (ITERATION_COMPLETED) and sets its momentum
            every iteration; a handler built with its own ``momentum_warmup`` is refused (its call counter
            does not survive a resume).
        consistency_weight: the weight of the consistency term once ramped up.
        rampup_epochs: epochs of the sigmoid ramp-up of that weight (0: full weight from the start).
        ema_warmup: the reference implementation's warm-up of the momentum (``ema_momentum``).
        noise_std: std of the input noise of each view.
        noise_seed: seed of the noise generator.
        kwargs: everything else ``common.training.base.Trainer`` takes (``precision``, ...; gradient
            accumulation is not supported: the teacher follows every iteration).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        loss_function: Any,
        aux_data_loader: Iterable,
        ema_handler: EMAHandler,
        consistency_weight: float = 1.0,
        rampup_epochs: float = 10.0,
        ema_warmup: bool = True,
        noise_std: float = 0.05,
        noise_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("accumulation_steps", 1) != 1:
            raise ValueError("MeanTeacherTrainer does not support gradient accumulation (accumulation_steps > 1)")
        if getattr(ema_handler, "_momentum_lambda_obj", None) is not None:
            raise ValueError("build the EMAHandler without momentum_warmup: the trainer sets the momentum (ema_warmup)")
        student = getattr(network, "module", network)
        if ema_handler.model is not student:
            raise ValueError("the EMAHandler must average this trainer's network")
        self.ema_handler, self.teacher = ema_handler, ema_handler.ema_model
        self.consistency_weight, self.rampup_epochs = float(consistency_weight), float(rampup_epochs)
        self.ema_warmup = bool(ema_warmup)
        self.objective = ConsistencyObjective(noise_std, noise_seed)
        self._init_aux_batches(aux_data_loader)
        super().__init__(network=network, loss_function=loss_function, **kwargs)
        self.precision.network(self.teacher)
        ema_handler.attach(self, name=EMA_MOMENTUM, event=Events.ITERATION_COMPLETED)

    def weight_at(self, epoch: float) -> float:
        """``w(t)``: the consistency weight after ``epoch`` (fractional) epochs."""
        return self.consistency_weight * sigmoid_rampup(epoch, self.rampup_epochs)

    def compute_loss(self, batchdata: Any, inputs: torch.Tensor, targets: Any, *args: Any, **kwargs: Any) -> Any:
        """``L_seg`` of the labelled batch + ``w(t)`` x the consistency of student and teacher on the labelled
        and an unlabelled batch together; sets the EMA momentum of this iteration's update."""
        n = inputs.shape[0]
        unlabelled = self.precision.batch(_images(self._next_aux_batch(), self.state.device, self.non_blocking))
        plain = (torch.as_tensor(inputs).as_subclass(torch.Tensor), unlabelled.as_subclass(torch.Tensor))
        images = self.precision.batch(torch.cat([plain[0], plain[1].to(plain[0].dtype)]))
        student_in, teacher_in = (self.precision.batch(v) for v in self.objective.views(images))
        # t: epochs completed before this step (the first step of the run is t = 0)
        weight = self.weight_at((self.state.iteration - 1) / (self.state.epoch_length or 1))
        # ema_train: batch statistics and its own running statistics; copy/update: the averaged ones
        self.teacher.train(self.ema_handler.handle_buffers == "ema_train")
        logits = self.inferer(student_in, self.network)
        self.state.output[Keys.PRED] = logits[:n]
        self.fire_event(IterationEvents.FORWARD_COMPLETED)
        with torch.no_grad():
            teacher_logits = self.teacher(teacher_in)
        seg = self.loss_function(float32(logits[:n]), targets).mean()
        consistency = self.objective(logits, teacher_logits)
        self.state.output.update(
            seg_loss=seg.detach(), consistency=consistency.detach(), consistency_weight=torch.tensor(weight)
        )
        # the EMA handler (ITERATION_COMPLETED, after the optimiser step) moves the teacher with this momentum
        momentum = ema_momentum(self.state.iteration, self.ema_handler.momentum, self.ema_warmup)
        setattr(self.state, EMA_MOMENTUM, momentum)
        self.state.output[EMA_MOMENTUM] = torch.tensor(momentum)
        return seg + weight * consistency
