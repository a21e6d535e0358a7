"""Stage 2: teacher selection, the frozen teacher ensemble and its cached soft targets."""

from common.distill import selection, soft_targets, teachers

__all__ = ["selection", "soft_targets", "teachers"]
