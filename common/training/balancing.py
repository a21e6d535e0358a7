"""How the joint loss weighs the segmentation loss against each auxiliary task's loss (``aux_balancing``).

Every iteration of joint mode yields ``L_seg`` and one loss ``L_i`` per task; a balancer turns them into the
loss that is minimised and reports the effective weight of each (``metrics.json``: ``train_seg_weight``,
``train_aux_weight_<task>``, averaged over the epoch). ``aux_weights`` (lambda_i) mean, by mode:

* ``fixed``: ``seg_weight * L_seg + sum_i lambda_i * L_i``; lambda_i are the weights.
* ``uncertainty`` (Kendall, Gal & Cipolla, CVPR 2018): ``sum_k exp(-s_k) * L_k + s_k`` over the segmentation
  loss and every task with lambda_i > 0, with a learnt log-variance ``s_k = log sigma_k^2`` per loss (the
  common form without Kendall's 1/2 factors: weight ``1 / sigma^2``, regulariser ``log sigma^2``; at its
  optimum ``exp(-s_k) = 1 / L_k``). ``s_k`` starts at ``-log`` of its fixed weight (``seg_weight``, lambda_i),
  so training starts where ``fixed`` would; the effective weights are ``exp(-s_k)``.
* ``gradnorm``: ``seg_weight * L_seg + sum_i w_i * L_i`` with ``w_i = ratio * ||g_seg|| / ||g_i||`` recomputed
  every iteration and detached, where ``g`` is a loss's gradient on the U-Net weights shared by the
  segmentation and task i (``shared_parameters``: all but the segmentation head, of them those task i's
  loss reaches), ``g_seg`` that of ``seg_weight * L_seg``: each task's gradient on the shared weights is then
  ``ratio`` times the segmentation's. A gradient-ratio normalisation, not the full GradNorm of Chen et al.
  (ICML 2018), which learns the weights by a second loss towards norms balanced by training rates. Costs one
  extra backward pass per loss.

In every mode a task with lambda_i = 0 is off: its loss is still computed (the auxiliary pass runs) and
enters with weight 0, so ``fixed`` with every lambda 0 trains exactly like the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from common.training.networks import MultiTaskUNet, seg_head_prefix

BALANCING = ("fixed", "uncertainty", "gradnorm")
SEG = "seg"  # the segmentation loss's key among the effective weights


@dataclass
class Combined:
    """One iteration's joint loss.

    Attributes:
        total: what is minimised.
        aux: the weighted auxiliary losses, ``sum_i w_i * L_i`` (the ``aux_loss`` metric).
        weights: the effective weight of ``seg`` and of every task (detached).
    """

    total: torch.Tensor
    aux: torch.Tensor
    weights: dict[str, torch.Tensor]


class LossBalancer(nn.Module):
    """Base of the modes: ``forward(seg, losses, shared)`` -> ``Combined``.

    Args:
        task_weights: lambda per task (finite, >= 0; 0 switches a task off).
        seg_weight: the segmentation loss's weight (``uncertainty``: its starting weight; > 0).
    """

    mode = ""

    def __init__(self, task_weights: Mapping[str, float], seg_weight: float = 1.0) -> None:
        super().__init__()
        bad = {n: w for n, w in task_weights.items() if not (math.isfinite(float(w)) and float(w) >= 0)}
        if bad:
            raise ValueError(f"aux_weights must be finite and >= 0, got {bad}")
        if not (math.isfinite(seg_weight) and seg_weight > 0):
            raise ValueError(f"seg_weight must be finite and > 0, got {seg_weight}")
        self.task_weights = {n: float(w) for n, w in task_weights.items()}
        self.seg_weight = float(seg_weight)

    @property
    def active(self) -> list[str]:
        """The tasks that are on (lambda > 0)."""
        return [n for n, w in self.task_weights.items() if w > 0]

    def forward(
        self, seg: torch.Tensor, losses: Mapping[str, torch.Tensor], shared: Sequence[torch.Tensor] = ()
    ) -> Combined:
        raise NotImplementedError


class FixedBalancing(LossBalancer):
    """``seg_weight * L_seg + sum_i lambda_i * L_i`` (what joint mode always did)."""

    mode = "fixed"

    def forward(
        self, seg: torch.Tensor, losses: Mapping[str, torch.Tensor], shared: Sequence[torch.Tensor] = ()
    ) -> Combined:
        aux = sum(self.task_weights[n] * v for n, v in losses.items())
        weights = {SEG: self.seg_weight, **{n: self.task_weights[n] for n in losses}}
        return Combined(self.seg_weight * seg + aux, torch.as_tensor(aux), _as_tensors(weights, seg))


class UncertaintyBalancing(LossBalancer):
    """``sum_k exp(-s_k) * L_k + s_k`` with learnt ``s_k`` (``log_vars``: ``seg`` and each task that is on),
    each starting at ``-log`` of its fixed weight. Its parameters belong in the optimiser
    (``param_groups``) and its state in the resumable checkpoints."""

    mode = "uncertainty"

    def __init__(self, task_weights: Mapping[str, float], seg_weight: float = 1.0) -> None:
        if SEG in task_weights:
            raise ValueError(f"a task may not be called {SEG!r}")
        super().__init__(task_weights, seg_weight)
        start = {SEG: self.seg_weight, **{n: self.task_weights[n] for n in self.active}}
        self.log_vars = nn.ParameterDict(
            {n: nn.Parameter(torch.tensor(-math.log(w), dtype=torch.float32)) for n, w in start.items()}
        )

    def _term(self, name: str, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.log_vars[name]
        weight = torch.exp(-s)
        return weight * loss + s, weight.detach()

    def forward(
        self, seg: torch.Tensor, losses: Mapping[str, torch.Tensor], shared: Sequence[torch.Tensor] = ()
    ) -> Combined:
        total, seg_w = self._term(SEG, seg)
        weights, aux = {SEG: seg_w}, seg.new_zeros(())
        for name, loss in losses.items():
            if name in self.log_vars:
                term, weights[name] = self._term(name, loss)
                aux = aux + weights[name] * loss.detach()
            else:  # off: in the graph with weight 0
                term, weights[name] = 0.0 * loss, seg.new_zeros(())
            total = total + term
        return Combined(total, aux, weights)


class GradNormBalancing(LossBalancer):
    """``seg_weight * L_seg + sum_i w_i * L_i``, ``w_i = ratio * ||grad L_seg|| / ||grad L_i||`` on the shared
    weights, detached (a gradient-ratio normalisation; see the module's docstring)."""

    mode = "gradnorm"

    def __init__(self, task_weights: Mapping[str, float], seg_weight: float = 1.0, ratio: float = 0.1) -> None:
        super().__init__(task_weights, seg_weight)
        if not (math.isfinite(ratio) and ratio > 0):
            raise ValueError(f"gradnorm_ratio must be finite and > 0, got {ratio}")
        self.ratio = float(ratio)

    def forward(
        self, seg: torch.Tensor, losses: Mapping[str, torch.Tensor], shared: Sequence[torch.Tensor] = ()
    ) -> Combined:
        params = [p for p in shared if p.requires_grad]
        if not params:
            raise ValueError("gradnorm balancing needs the shared parameters")
        seg_term = self.seg_weight * seg
        seg_grads = _grads(seg_term, params)
        weights: dict[str, torch.Tensor] = {SEG: seg.new_tensor(self.seg_weight)}
        aux = seg.new_zeros(())
        for name, loss in losses.items():
            weight = seg.new_zeros(())
            if name in self.active:
                grads = _grads(loss, params)
                reached = [i for i, g in enumerate(grads) if g is not None]
                own = _norm([grads[i] for i in reached], seg)
                other = _norm([seg_grads[i] for i in reached if seg_grads[i] is not None], seg)
                if reached and torch.isfinite(own) and own > 0:
                    weight = (self.ratio * other / own).detach()
            weights[name] = weight
            aux = aux + weight * loss
        return Combined(seg_term + aux, aux, weights)


def _grads(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    """``d loss / d params`` (None where the loss does not reach a parameter), the graph kept for the backward."""
    if not loss.requires_grad:
        return (None,) * len(params)
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


def _norm(grads: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The L2 norm of several tensors together (0 for none), in float32 on ``like``'s device."""
    if not grads:
        return torch.zeros((), device=like.device)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))


def _as_tensors(weights: Mapping[str, float], like: torch.Tensor) -> dict[str, torch.Tensor]:
    return {n: like.new_tensor(w).detach() for n, w in weights.items()}


def create_balancer(
    mode: str,
    task_weights: Mapping[str, float],
    seg_weight: float = 1.0,
    gradnorm_ratio: float = 0.1,
    device: torch.device | str | None = None,
) -> LossBalancer:
    """The balancer of ``mode`` (one of ``BALANCING``) on ``device``."""
    if mode == "fixed":
        balancer: LossBalancer = FixedBalancing(task_weights, seg_weight)
    elif mode == "uncertainty":
        balancer = UncertaintyBalancing(task_weights, seg_weight)
    elif mode == "gradnorm":
        balancer = GradNormBalancing(task_weights, seg_weight, gradnorm_ratio)
    else:
        raise ValueError(f"aux_balancing must be one of {', '.join(BALANCING)}, got {mode!r}")
    return balancer.to(device) if device is not None else balancer


def shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The U-Net weights the segmentation shares with the tasks: every one but the segmentation head's."""
    model = getattr(model, "module", model)  # the MultiTaskUNet inside DistributedDataParallel
    if not isinstance(model, MultiTaskUNet):
        raise TypeError(f"shared parameters of a MultiTaskUNet, got {type(model).__name__}")
    head = seg_head_prefix(model.seg_net)
    return [p for n, p in model.seg_net.named_parameters() if not n.startswith(head) and p.requires_grad]


def param_groups(network: nn.Module, balancer: LossBalancer | None) -> list:
    """The optimiser's parameters: the network's, plus the balancer's own (``uncertainty``) in a group
    without weight decay (a decayed log-variance would be pulled towards weight 1)."""
    params = list(network.parameters())
    own = [] if balancer is None else list(balancer.parameters())
    if not own:
        return params
    return [{"params": params}, {"params": own, "weight_decay": 0.0}]
