"""MONAI's supervised engines with one precision policy on any device: the base of every trainer here.

MONAI 1.6.1's ``SupervisedTrainer``/``SupervisedEvaluator`` hard-code ``torch.autocast("cuda")`` and a CUDA
``GradScaler`` when ``amp`` is on; on a CPU they warn and compute in fp32, and their iteration has no
memory-layout step. ``Trainer`` and ``Evaluator`` take a ``common.training.precision.Precision`` instead and
apply it the same way for the baseline and for every custom engine (joint, pre-training, distillation,
Mean Teacher): the network and the batches in its memory layout, the forward pass and the loss under its
autocast, the loss itself in fp32, the backward pass through its ``GradScaler`` where it has one (CUDA fp16),
MONAI's gradient accumulation and iteration events unchanged. A custom trainer overrides ``compute_loss``
only (the forward pass and the loss of one iteration); everything else is this one ``_iteration``.
``compile`` (``torch.compile``) is MONAI's own argument. The network is called on plain tensors (``plain``), the
evaluator's prediction given the input's metadata back afterwards, as MONAI does under ``compile``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from common.training.precision import FP32, Precision, resolve_precision


def float32(value: Any) -> Any:
    """``value`` with every floating tensor in it (nested in tuples, lists, dicts) in fp32: losses are computed
    in fp32 whatever the autocast dtype of the network's outputs."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, (tuple, list)):
        return type(value)(float32(v) for v in value)
    if isinstance(value, dict):
        return {k: float32(v) for k, v in value.items()}
    return value


def plain(value: Any) -> Any:
    """A ``MetaTensor`` as a plain tensor (anything else unchanged): a network called on a ``MetaTensor`` pays
    MONAI's metadata handling on every operation (measured: a third of the U-Net's CPU inference time at 256 px),
    and ``torch.compile`` does not take one (pytorch/pytorch#117026)."""
    return value.as_subclass(torch.Tensor) if isinstance(value, MetaTensor) else value


def _precision(precision: Precision | None, amp: bool, device: Any) -> Precision:
    """``precision``, or for a caller that passes MONAI's ``amp=True``: mixed precision on ``device``."""
    if precision is not None and amp:
        raise ValueError("give precision or amp, not both (precision covers amp: common.training.precision)")
    if precision is not None:
        return precision
    return resolve_precision(device, amp=True) if amp else FP32


def _in_layout(prepare_batch: Callable, precision: Precision, *args: Any, **kwargs: Any) -> Any:
    """``prepare_batch``'s batch with its image in ``precision``'s memory layout."""
    batch = prepare_batch(*args, **kwargs)
    return (precision.batch(batch[0]), *batch[1:])


class Trainer(SupervisedTrainer):
    """``SupervisedTrainer`` under a ``Precision`` (see the module): MONAI's arguments, ``amp`` replaced by
    ``precision`` (``amp=True`` still works: mixed precision as ``"auto"`` resolves it on ``device``).

    Subclasses override ``compute_loss``; ``state.output`` holds ``image``, ``label``, ``loss`` (fp32) and
    whatever ``compute_loss`` adds (the default: ``pred``).
    """

    def __init__(self, *args: Any, precision: Precision | None = None, amp: bool = False, **kwargs: Any) -> None:
        precision = _precision(precision, amp, kwargs.get("device", "cpu"))
        if "network" in kwargs:
            precision.network(kwargs["network"])  # before MONAI compiles it
        super().__init__(*args, amp=False, **kwargs)
        self.precision = precision  # ``amp`` stays False: MONAI's own (CUDA-only) autocast path is never taken
        self.scaler = precision.grad_scaler()
        self.prepare_batch = functools.partial(_in_layout, self.prepare_batch, precision)

    def compute_loss(self, batchdata: Any, inputs: torch.Tensor, targets: Any, *args: Any, **kwargs: Any) -> Any:
        """The forward pass and the loss of one iteration, under the precision's autocast (MONAI's: the
        inferer's prediction into ``state.output['pred']``, FORWARD_COMPLETED, ``loss_function(pred, label)``).
        ``batchdata`` is the loader's batch as it came, for trainers that read more of it."""
        self.state.output[Keys.PRED] = self.inferer(inputs, self.network, *args, **kwargs)
        self.fire_event(IterationEvents.FORWARD_COMPLETED)
        return self.loss_function(float32(self.state.output[Keys.PRED]), targets)

    def _accumulation(self) -> tuple[bool, bool]:
        """(zero the gradients before this iteration, step the optimiser after it): MONAI's accumulation."""
        acc = self.accumulation_steps
        if acc == 1:
            return True, True
        epoch_length = self.state.epoch_length
        local = (self.state.iteration - 1) % epoch_length if epoch_length is not None else self.state.iteration - 1
        last = epoch_length is not None and local + 1 == epoch_length
        return local % acc == 0, (local + 1) % acc == 0 or last

    def _iteration(self, engine: Trainer, batchdata: Any) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, args, kwargs = batch if len(batch) == 4 else (*batch, (), {})
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        inputs, targets = plain(inputs), plain(targets)
        zero_grad, step = engine._accumulation()
        engine.network.train()
        if zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with engine.precision.autocast():
            loss = engine.compute_loss(batchdata, inputs, targets, *args, **kwargs).mean().float()
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        scaled = loss / engine.accumulation_steps if engine.accumulation_steps > 1 else loss
        (engine.scaler.scale(scaled) if engine.scaler is not None else scaled).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if step and engine.scaler is not None:
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        elif step:
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class Evaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` under a ``Precision``: MONAI's arguments, ``amp`` replaced by ``precision``; the
    prediction is handed to the post-processing in fp32."""

    def __init__(self, *args: Any, precision: Precision | None = None, amp: bool = False, **kwargs: Any) -> None:
        precision = _precision(precision, amp, kwargs.get("device", "cpu"))
        if "network" in kwargs:
            precision.network(kwargs["network"])
        super().__init__(*args, amp=False, **kwargs)
        self.precision = precision  # ``amp`` stays False: MONAI's own (CUDA-only) autocast path is never taken
        self.prepare_batch = functools.partial(_in_layout, self.prepare_batch, precision)

    def _iteration(self, engine: Evaluator, batchdata: Any) -> dict:
        """MONAI's evaluation iteration under the precision, the network called on plain tensors and the
        prediction given the input's metadata back (what MONAI does under ``compile``), in fp32."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, args, kwargs = batch if len(batch) == 4 else (*batch, (), {})
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        with engine.mode(engine.network), engine.precision.autocast():
            pred = engine.inferer(plain(inputs), engine.network, *args, **kwargs)
        if isinstance(inputs, MetaTensor):
            pred = MetaTensor(pred, meta=inputs.meta, applied_operations=inputs.applied_operations)
        engine.state.output[Keys.PRED] = float32(pred)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
