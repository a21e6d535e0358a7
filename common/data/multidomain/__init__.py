"""Multi-domain unlabelled data for hierarchical self-supervised pre-training (HSSL).

Several folders ("domains"), each of one modality group (:data:`GROUPS`), are aggregated into one
datalist of 2D items (:mod:`.scan`); each item reads as a normalised gray slice (:mod:`.readers`,
also the :class:`LoadSliced` transform); :mod:`.sampling` draws every domain equally often.
"""

from common.data.multidomain.readers import (
    CT_WINDOW,
    GROUPS,
    LoadSliced,
    MultiDomainError,
    foreground_fraction,
    normalise_slice,
    read_slice,
)
from common.data.multidomain.sampling import balanced_sampler, domain_balanced_weights
from common.data.multidomain.scan import SourceScan, build_multidomain_datalist, enumerate_source, scan_sources

__all__ = [
    "CT_WINDOW",
    "GROUPS",
    "LoadSliced",
    "MultiDomainError",
    "SourceScan",
    "balanced_sampler",
    "build_multidomain_datalist",
    "domain_balanced_weights",
    "enumerate_source",
    "foreground_fraction",
    "normalise_slice",
    "read_slice",
    "scan_sources",
]
