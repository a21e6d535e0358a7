"""Knowledge-distillation losses for binary segmentation with sigmoid outputs.

The soft target ``p`` is the teachers' ensemble probability at temperature T (mean of
``sigmoid(z_i / T)``); the student's probability at the same temperature is ``q = sigmoid(z / T)``.
Per pixel:

* ``bce``: ``-(p log q + (1 - p) log(1 - q))`` (cross-entropy with soft targets; the default)
* ``kl``:  ``p log(p / q) + (1 - p) log((1 - p) / (1 - q))`` (= bce minus the target's entropy:
  the same gradient, a value that is 0 at a perfect match)
* ``mse``: ``(q - p) ** 2`` (Noothout et al. 2022)

Every choice is multiplied by T**2 so that the gradient keeps its magnitude as T changes (Hinton et
al. 2015). torch has no soft-target binary KL or temperature-scaled sigmoid distillation loss, so
these few lines are ours; the BCE is torch's ``binary_cross_entropy_with_logits``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

KD_KINDS = ("bce", "kl", "mse")
_EPS = 1e-6


def kd_loss(student_logits: torch.Tensor, soft_target: torch.Tensor, kind: str = "bce", temperature: float = 1.0):
    """Mean distillation loss of ``student_logits`` against ``soft_target`` probabilities (same shape)."""
    if kind not in KD_KINDS:
        raise ValueError(f"unknown kd loss {kind!r}: choose one of {KD_KINDS}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != soft_target.shape:
        raise ValueError(f"student output {tuple(student_logits.shape)} vs soft target {tuple(soft_target.shape)}")
    z = student_logits.float() / temperature
    p = soft_target.float().clamp(0.0, 1.0)
    if kind == "mse":
        per_pixel = (torch.sigmoid(z) - p) ** 2
    else:
        per_pixel = F.binary_cross_entropy_with_logits(z, p, reduction="none")
        if kind == "kl":
            pc = p.clamp(_EPS, 1 - _EPS)
            entropy = -(pc * pc.log() + (1 - pc) * (1 - pc).log())
            per_pixel = per_pixel - entropy
    return per_pixel.mean() * temperature**2


class DistillationLoss(torch.nn.Module):
    """``L_kd(student, ensemble)`` on every image plus ``alpha * L_seg(student, label)`` on the labelled ones.

    ``L_kd`` is averaged over the whole batch (labelled and unlabelled images); ``L_seg`` is computed on
    the labelled images of the batch only and is left out when the batch has none. So ``alpha`` sets the
    weight of the ground truth independently of how many unlabelled images are mixed in.

    Args:
        seg_loss: the segmentation loss on logits (the baseline's DiceFocalLoss); None: KD only.
        kind: ``bce``, ``kl`` or ``mse`` (see the module docstring).
        temperature: T of the student's sigmoid; the soft targets must be made at the same T.
        alpha: weight of the segmentation loss.
    """

    def __init__(
        self,
        seg_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        kind: str = "bce",
        temperature: float = 1.0,
        alpha: float = 1.0,
    ) -> None:
        super().__init__()
        if kind not in KD_KINDS:
            raise ValueError(f"unknown kd loss {kind!r}: choose one of {KD_KINDS}")
        self.seg_loss, self.kind, self.temperature, self.alpha = seg_loss, kind, float(temperature), float(alpha)

    def forward(
        self,
        student_logits: torch.Tensor,
        soft_target: torch.Tensor,
        label: torch.Tensor | None = None,
        labelled: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its parts (``kd``, ``seg``; ``seg`` is 0 without labelled images).

        ``labelled`` is a per-image flag (B,); None means every image with ``label`` is labelled.
        """
        kd = kd_loss(student_logits, soft_target, self.kind, self.temperature)
        seg = student_logits.new_zeros(())
        if self.seg_loss is not None and self.alpha > 0 and label is not None:
            mask = torch.ones(len(label), dtype=torch.bool, device=label.device) if labelled is None else labelled
            mask = mask.to(student_logits.device).reshape(-1).bool()
            if mask.any():
                seg = self.seg_loss(student_logits[mask], label[mask]).mean()
        return kd + self.alpha * seg, {"kd": kd, "seg": seg}
