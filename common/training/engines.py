"""Training engines for the auxiliary tasks, built on ``common.training.base.Trainer`` (MONAI's SupervisedTrainer
with one precision policy on any device).

* ``MultiTaskTrainer`` (joint mode): every iteration takes the labelled segmentation batch of its
  data loader and, separately, an auxiliary batch from a second loader over all training images;
  the loss is ``seg_weight * L_seg + sum_i lambda_i * L_i`` (``fixed``), or weighted by a learnt or
  gradient-matched balance (``common.training.balancing``). It reuses the base trainer's iteration (precision,
  gradient accumulation, events) by handing it that combined loss. With every lambda 0 it trains exactly
  like the baseline: the auxiliary pass leaves every random stream and batch-norm buffer of the
  segmentation training alone (its loader has its own generator, its random layers draw from the pretext
  stream, its batch norm neither updates nor counts running statistics).
* ``PretextTrainer`` (pre-training mode): auxiliary losses only, on batches of all training images;
  no segmentation forward pass at all.
* ``DistillationTrainer`` (stage 2): the student against the teacher ensemble's soft targets (cached
  in the batch, or computed online from the teachers) plus the segmentation loss on labelled images.

Pretexts are generated on the batch, on the training device, with a seeded ``torch.Generator`` whose
state the resumable checkpoints carry (``common.training.rng.RandomState``): ``SeededObjective``, which
``common.training.mean_teacher`` shares with ``AuxiliaryBatches`` (the second, cycled loader).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from ignite.metrics import Average, Metric
from monai.engines.utils import IterationEvents
from monai.handlers import from_engine
from monai.utils.enums import CommonKeys as Keys

from common.distill.teachers import TeacherEnsemble
from common.training.balancing import SEG, FixedBalancing, GradNormBalancing, LossBalancer, shared_parameters
from common.training.base import Trainer, float32
from common.training.kd import DistillationLoss
from common.training.networks import MultiTaskUNet
from common.training.precision import autocast_off
from common.utils.io import atomic_path
from common.utils.metrics import update_metrics_file


@contextlib.contextmanager
def bn_running_stats_frozen(module: torch.nn.Module) -> Iterator[None]:
    """Batch norm layers still normalise with batch statistics but leave their running statistics alone:
    neither the means and variances nor the ``num_batches_tracked`` counter move.

    The auxiliary passes see other images (rotated, shuffled, corrupted) than the segmentation pass; if
    they updated the running statistics, the network evaluated in eval mode would normalise with a mix
    of both (measured on the demo: inpainting_joint trained its segmentation loss as far as the baseline
    yet scored validation Dice 0.04 against 0.60). In training mode a layer that does not track running
    statistics normalises with the batch's and touches no buffer (momentum 0 would still count the batch).
    """
    norms = [
        m
        for m in module.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


@contextlib.contextmanager
def global_rng_apart(generator: torch.Generator) -> Iterator[None]:
    """Torch's process-wide generator of ``generator``'s device reseeded from ``generator`` for the block,
    and put back where it was afterwards.

    Random layers (dropout) in the auxiliary pass then draw from the pretext stream (which the resumable
    checkpoints carry), not from the stream the segmentation pass and the data loaders draw from.
    """
    device = generator.device
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
    cuda = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


class SeededObjective:
    """An engine's ``objective`` that draws from its own ``torch.Generator``: seeded once, created on the
    device of its first use, its state carried by the resumable checkpoints (``common.training.rng.RandomState``
    reads an engine's ``objective``)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._restored: Mapping[str, Any] | None = None  # a checkpoint's generator state, applied on first use

    def generator(self, device: torch.device) -> torch.Generator:
        """The pretext generator on ``device`` (seeded once; rank-dependent seeds are the caller's job)."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
            restored, self._restored = self._restored, None
            if restored is not None and torch.device(restored["device"]).type == self._generator.device.type:
                self._generator.set_state(restored["state"].cpu())
            elif restored is not None:
                warnings.warn(
                    f"the pretext generator was on {restored['device']}, now on {device}: seeded afresh", stacklevel=2
                )
        return self._generator

    def state_dict(self) -> dict[str, Any]:
        """The pretext generator's state (none before its first use): part of a resumable checkpoint."""
        g = self._generator
        if g is None:
            return {"device": None, "state": None} if self._restored is None else dict(self._restored)
        return {"device": str(g.device), "state": g.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the pretext generator from ``state`` (it is created on the training device on first use)."""
        self._generator = None
        self._restored = None if state.get("state") is None else dict(state)


class AuxiliaryObjective(SeededObjective):
    """Weighted sum of the auxiliary tasks' losses on one image batch (pretexts made on its device)."""

    def __init__(
        self, model: MultiTaskUNet, weights: Mapping[str, float], seed: int = 0, freeze_bn_stats: bool = True
    ) -> None:
        model = getattr(model, "module", model)  # the MultiTaskUNet inside DistributedDataParallel
        unknown = set(weights) - set(model.tasks)
        if unknown:
            raise KeyError(f"weights given for tasks without a head: {sorted(unknown)}")
        self.model, self.weights, self.freeze_bn_stats = model, dict(weights), freeze_bn_stats
        #: the memory layout of the network's inputs (the trainer's ``precision.batch``; pretexts may change it)
        self.layout: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
        super().__init__(seed)

    @property
    def label_keys(self) -> tuple[str, ...]:
        """Per-image label keys the weighted tasks read from the auxiliary batch."""
        return tuple(dict.fromkeys(k for n in self.weights for k in self.model.tasks[n].label_keys))

    def losses(
        self,
        network: torch.nn.Module,
        images: torch.Tensor,
        labels: Mapping[str, torch.Tensor] | None = None,
        rng_apart: bool = False,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Each task's (unweighted) loss, and the terms of those that keep any (``<task>/<term>``).

        ``rng_apart``: random layers draw from the pretext generator (``global_rng_apart``), not from torch's
        process-wide stream."""
        generator = self.generator(images.device)
        losses: dict[str, torch.Tensor] = {}
        terms: dict[str, torch.Tensor] = {}
        with contextlib.ExitStack() as stack:
            if self.freeze_bn_stats:
                stack.enter_context(bn_running_stats_frozen(self.model))
            if rng_apart:
                stack.enter_context(global_rng_apart(generator))
            for name in self.weights:
                task = self.model.tasks[name]
                if task.label_keys:
                    pretext = task.pretext(images, generator, labels={k: labels[k] for k in task.label_keys})
                else:
                    pretext = task.pretext(images, generator)
                losses[name] = task.loss(float32(network(self.layout(pretext.input), task=name)), pretext)
                terms.update({f"{name}/{t}": v for t, v in (getattr(task, "last_terms", None) or {}).items()})
        return losses, terms

    def __call__(
        self, network: torch.nn.Module, images: torch.Tensor, labels: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total weighted auxiliary loss and each task's (unweighted) loss (plus its terms, if it keeps any)."""
        losses, terms = self.losses(network, images, labels)
        total = sum(self.weights[n] * v for n, v in losses.items())
        return total, {**losses, **terms}


def _images(batch: Any, device: torch.device, non_blocking: bool) -> torch.Tensor:
    images = batch[Keys.IMAGE] if isinstance(batch, Mapping) else batch
    return torch.as_tensor(images).to(device, non_blocking=non_blocking)


def _labels(batch: Any, keys: tuple[str, ...], device: torch.device) -> dict[str, torch.Tensor] | None:
    """The per-image class labels ``keys`` of an auxiliary batch, as long tensors on ``device``."""
    if not keys:
        return None
    missing = [k for k in keys if not isinstance(batch, Mapping) or k not in batch]
    if missing:
        raise KeyError(
            f"the auxiliary batch lacks {missing}: this task needs labelled auxiliary items "
            "(e.g. the multi-domain datalist of scripts/prepare_multidomain.py)"
        )
    return {k: torch.as_tensor(batch[k]).to(device).long().reshape(-1) for k in keys}


def cycle(loader: Iterable, first_pass: int = 0) -> Iterator:
    """Endless iteration over a loader, re-shuffling (``set_epoch``: ``first_pass``, then one more each
    pass) when it has a sampler that takes an epoch."""
    epoch = first_pass
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the auxiliary data loader yields no batch (fewer images than aux_batch_size?)")
        epoch += 1


class AuxiliaryBatches:
    """For a trainer that draws a second batch every iteration from its ``aux_data_loader``: the loader is
    cycled, and every training epoch starts a fresh pass, so that where the stream stands at an epoch
    boundary is all in the random state (``common.training.rng``) and a resumed run draws what the
    uninterrupted run drew."""

    state: Any  # the trainer's ignite state

    def _init_aux_batches(self, aux_data_loader: Iterable) -> None:
        self.aux_data_loader = aux_data_loader
        self._aux_batches: Iterator | None = None
        self._aux_epoch = 0  # the training epoch that _aux_batches was started in

    def _next_aux_batch(self) -> Any:
        if self._aux_batches is None or self._aux_epoch != self.state.epoch:
            # pass numbers (a distributed sampler's shuffle) distinct across epochs: an epoch takes at
            # most epoch_length passes
            first_pass = (self.state.epoch - 1) * (self.state.epoch_length or 1)
            self._aux_batches, self._aux_epoch = cycle(self.aux_data_loader, first_pass), self.state.epoch
        with autocast_off():  # drawn inside the loss: the loader's transforms must not run under autocast
            return next(self._aux_batches)


class MultiTaskTrainer(AuxiliaryBatches, Trainer):
    """Joint mode: the segmentation loss of the seg batch and every task's loss of the aux batch, combined
    by ``balancer`` (``fixed`` by default: ``seg_weight * L_seg + sum lambda_i L_i``) every iteration.

    Args:
        network: the ``MultiTaskUNet`` (its segmentation forward is the plain U-Net).
        loss_function: the segmentation loss.
        aux_data_loader: loader over all training images (labelled and unlabelled), cycled; every training
            epoch starts a fresh pass, so that where the auxiliary stream stands at an epoch boundary is
            all in the random state (``common.training.rng``) and a resumed run draws what the
            uninterrupted run drew. Give it its own ``generator``: drawing its shuffles from torch's
            process-wide one would move the labelled loader's.
        task_weights: lambda per task name.
        seg_weight: weight of the segmentation loss (without a ``balancer``; a balancer has its own).
        pretext_seed: seed of the pretext generator.
        balancer: how the losses are weighted (``common.training.balancing``; its parameters, if any, must be
            in ``optimizer``); by default ``fixed`` with ``task_weights`` and ``seg_weight``.
        kwargs: everything else ``common.training.base.Trainer`` takes (``precision``, ...).

    The engine's output holds ``seg_loss``, ``aux_loss`` (the weighted auxiliary part), ``aux_loss/<task>``
    (unweighted), ``seg_weight`` and ``aux_weight/<task>`` (the effective weights; ``joint_metrics``).
    """

    def __init__(
        self,
        network: MultiTaskUNet,
        loss_function: Any,
        aux_data_loader: Iterable,
        task_weights: Mapping[str, float],
        seg_weight: float = 1.0,
        pretext_seed: int = 0,
        balancer: LossBalancer | None = None,
        **kwargs: Any,
    ) -> None:
        if balancer is None:
            balancer = FixedBalancing(task_weights, seg_weight)
        if set(balancer.task_weights) != set(task_weights) or balancer.seg_weight != seg_weight:
            raise ValueError(
                f"the balancer weighs {balancer.task_weights} (segmentation {balancer.seg_weight}), the trainer "
                f"{dict(task_weights)} (segmentation {seg_weight})"
            )
        if isinstance(balancer, GradNormBalancing) and _world_size() > 1:
            raise NotImplementedError(
                "aux_balancing 'gradnorm' takes gradients of each loss apart, which DistributedDataParallel's "
                "gradient hooks do not allow: train it in one process (or use 'fixed' / 'uncertainty')"
            )
        self.seg_loss, self.balancer = loss_function, balancer
        self.objective = AuxiliaryObjective(network, task_weights, pretext_seed)
        self._shared = shared_parameters(network) if isinstance(balancer, GradNormBalancing) else []
        self._init_aux_batches(aux_data_loader)
        super().__init__(network=network, loss_function=self._joint_loss, **kwargs)
        self.objective.layout = self.precision.batch
        if any(True for _ in balancer.parameters()):  # learnt weights: the same on every rank
            self.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._average_balancer_grads)

    def _joint_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        batch = self._next_aux_batch()
        images = self.precision.batch(_images(batch, self.state.device, self.non_blocking))
        labels = _labels(batch, self.objective.label_keys, self.state.device)
        seg = self.seg_loss(pred, target).mean()
        losses, terms = self.objective.losses(self.network, images, labels, rng_apart=True)
        joint = self.balancer(seg, losses, self._shared)
        out = self.state.output
        out["seg_loss"] = seg.detach()
        out["aux_loss"] = joint.aux.detach()
        out.update({f"aux_loss/{n}": v.detach() for n, v in {**losses, **terms}.items()})
        out["seg_weight"] = joint.weights[SEG]
        out.update({f"aux_weight/{n}": w for n, w in joint.weights.items() if n != SEG})
        return joint.total

    def _average_balancer_grads(self, engine: MultiTaskTrainer) -> None:
        """Under torch.distributed the balancer sits outside DistributedDataParallel: average its gradients."""
        world = _world_size()
        if world < 2:
            return
        for p in self.balancer.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(world)


def _world_size() -> int:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if distributed else 1


def joint_metrics(tasks: Iterable[str]) -> dict[str, Metric]:
    """The joint trainer's epoch averages (``additional_metrics``): ``seg_loss``, ``aux_loss`` and
    ``seg_weight``, and per task ``aux_loss_<task>`` (unweighted) and ``aux_weight_<task>`` (effective)."""
    keys = {"seg_loss": "seg_loss", "aux_loss": "aux_loss", "seg_weight": "seg_weight"}
    for task in tasks:
        keys.update({f"aux_loss_{task}": f"aux_loss/{task}", f"aux_weight_{task}": f"aux_weight/{task}"})
    return {name: Average(output_transform=from_engine([key], first=True)) for name, key in keys.items()}


class PretextTrainer(Trainer):
    """Pre-training mode: only the auxiliary losses, on the batches of ``train_data_loader``.

    Takes ``common.training.base.Trainer``'s arguments (``loss_function`` is not used and may be None) plus
    ``task_weights`` and ``pretext_seed``; ``network`` is the ``MultiTaskUNet``.
    """

    def __init__(
        self,
        network: MultiTaskUNet,
        task_weights: Mapping[str, float],
        pretext_seed: int = 0,
        loss_function: Any = None,
        **kwargs: Any,
    ) -> None:
        # only auxiliary passes here: the running statistics may as well describe the images trained on
        self.objective = AuxiliaryObjective(network, task_weights, pretext_seed, freeze_bn_stats=False)
        super().__init__(network=network, loss_function=loss_function, **kwargs)
        self.objective.layout = self.precision.batch

    def compute_loss(self, batchdata: Any, inputs: torch.Tensor, targets: Any, *args: Any, **kwargs: Any) -> Any:
        """The weighted auxiliary losses of the batch's images (no segmentation pass; ``aux_loss/<task>``)."""
        labels = _labels(batchdata, self.objective.label_keys, self.state.device)
        total, per_task = self.objective(self.network, inputs, labels)
        self.fire_event(IterationEvents.FORWARD_COMPLETED)
        self.state.output["aux_loss"] = total.detach()
        self.state.output.update({f"aux_loss/{n}": v.detach() for n, v in per_task.items()})
        return total


class DistillationTrainer(Trainer):
    """Stage 2: ``L_kd(student, ensemble) + alpha * L_seg(student, label)`` (``common.training.kd.DistillationLoss``).

    Cached mode (``ensemble=None``): the batch carries the soft targets under ``soft_key``, augmented
    with the image. Online mode: the frozen ``ensemble`` runs on this step's (augmented) images. The
    per-image ``labelled_key`` flag selects the images the segmentation term applies to (all, when the
    batch has no flag). The base trainer's iteration (precision, accumulation, events) is reused by handing
    it this loss.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        loss_function: DistillationLoss,
        ensemble: TeacherEnsemble | None = None,
        soft_key: str = "soft",
        labelled_key: str = "labelled",
        **kwargs: Any,
    ) -> None:
        self.distill_loss, self.ensemble = loss_function, None
        self.soft_key, self.labelled_key = soft_key, labelled_key
        self.set_ensemble(ensemble)
        super().__init__(network=network, loss_function=self._loss, **kwargs)

    def set_ensemble(self, ensemble: TeacherEnsemble | None) -> None:
        """Online mode with ``ensemble``, cached mode with None (the bundle sets it at run time)."""
        if ensemble is not None and abs(ensemble.temperature - self.distill_loss.temperature) > 1e-12:
            raise ValueError(
                f"the ensemble's temperature {ensemble.temperature} differs from the loss's "
                f"{self.distill_loss.temperature}"
            )
        self.ensemble = ensemble

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        batch = self.state.batch
        if self.ensemble is not None:
            soft = self.ensemble.probabilities(self.state.output[Keys.IMAGE])
        elif isinstance(batch, Mapping) and self.soft_key in batch:
            soft = torch.as_tensor(batch[self.soft_key]).to(pred.device, non_blocking=self.non_blocking)
        else:
            raise KeyError(f"cached distillation needs '{self.soft_key}' in every batch (LoadSoftTargetd)")
        labelled = batch.get(self.labelled_key) if isinstance(batch, Mapping) else None
        total, parts = self.distill_loss(pred, soft, target, None if labelled is None else torch.as_tensor(labelled))
        self.state.output["kd_loss"] = parts["kd"].detach()
        self.state.output["seg_loss"] = parts["seg"].detach()
        return total


def run_pretraining(
    trainer: PretextTrainer, seg_net: torch.nn.Module, pretrained_file: str, metrics_file: str | None = None
) -> str:
    """Run the pre-training phase, write the U-Net's weights to ``pretrained_file`` (atomically) and
    record the phase (epochs, last auxiliary loss, file) in the bundle's metrics.json.

    Under torch.distributed only rank 0 writes, and every rank waits until the file is there."""
    trainer.run()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and torch.distributed.get_rank() > 0:
        torch.distributed.barrier()
        return pretrained_file
    with atomic_path(pretrained_file) as tmp:
        torch.save(seg_net.state_dict(), tmp)
    if distributed:
        torch.distributed.barrier()
    if metrics_file:
        last = {k: float(v) for k, v in trainer.state.metrics.items()}
        update_metrics_file(
            metrics_file,
            pretraining={"epochs": trainer.state.epoch, "metrics": last, "pretrained_file": pretrained_file},
        )
    return pretrained_file
