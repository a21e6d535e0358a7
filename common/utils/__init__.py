"""Small helpers every layer uses: atomic writes, checksums, checkpoints, the running bundle, its settings."""

from common.utils import bundle, checkpoints, io, metrics, settings

__all__ = ["bundle", "checkpoints", "io", "metrics", "settings"]
