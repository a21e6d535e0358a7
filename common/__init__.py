"""Shared code of the bundle collection: data layer, transforms, handlers, losses and engines.

Bundle configs write ``$import common`` and then refer to ``common.<module>.<name>``; every
module they use is imported here (a ``$import common.x`` would bind ``common.x``, not ``common``).
"""

from common import (
    aggregate,
    bundle,
    cache,
    datalist,
    engines,
    handlers,
    imaging,
    io,
    kd,
    multidomain,
    networks,
    rle,
    soft_targets,
    ssl,
    teachers,
    transforms,
)

__all__ = [
    "aggregate",
    "bundle",
    "cache",
    "datalist",
    "engines",
    "handlers",
    "imaging",
    "io",
    "kd",
    "multidomain",
    "networks",
    "rle",
    "soft_targets",
    "ssl",
    "teachers",
    "transforms",
]
