"""Stage 2: teacher selection, the frozen teacher ensemble and its cached soft targets."""

from common.distill import soft_targets, teachers

__all__ = ["soft_targets", "teachers"]
