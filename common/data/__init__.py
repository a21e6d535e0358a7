"""The data layer: image/mask/RLE readers, datalists and splits, the unlabelled pool, caches, transforms,
multi-domain data."""

from common.data import aggregate, cache, datalist, demo, dicom, imaging, multidomain, pool, rle, sampling, transforms

__all__ = [
    "aggregate",
    "cache",
    "datalist",
    "demo",
    "dicom",
    "imaging",
    "multidomain",
    "pool",
    "rle",
    "sampling",
    "transforms",
]
