"""Small helpers every layer uses: atomic writes and checksums, where a running bundle lives."""

from common.utils import bundle, io, metrics

__all__ = ["bundle", "io", "metrics"]
