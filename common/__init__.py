"""Shared code of the bundle collection, vendored into every exported bundle.

Layers (``docs/ARCHITECTURE.md``):

- ``common.data``: reading images, masks and RLE, datalists and splits, caches, MONAI transforms,
  the multi-domain aggregate (HSSL) and the synthetic demo data;
- ``common.ssl``: the auxiliary self-supervised tasks and their registry;
- ``common.training``: networks, engines, handlers and losses that the bundle configs instantiate;
- ``common.distill``: stage 2: teacher selection, the teacher ensemble, soft targets;
- ``common.deploy``: DICOM SEG output and model-zoo packing/unpacking;
- ``common.utils``: atomic file writes, checksums, ``metrics.json`` and where a running bundle lives.

Bundle configs write ``$import common`` and then refer to ``common.<layer>.<module>.<name>``; every
module they use is imported here (a ``$import common.x`` would bind ``common.x``, not ``common``).
"""

from common import data, deploy, distill, ssl, training, utils

__all__ = ["data", "deploy", "distill", "ssl", "training", "utils"]
