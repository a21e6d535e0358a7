"""The bundle generator: the stage-1, distillation and Mean Teacher bundles from the hand-written baseline.

``bundles/baseline/configs/*.json`` is the template; every generated bundle is the baseline plus a
patch (``configs``, ``pretrain``, ``distill``, ``mean_teacher``), for each registered auxiliary task
(``common.ssl.list_tasks``). README prose lives in ``templates/*.md``; every JSON config, the
baseline's included, is written in one format (``formatting``). ``scripts/generate_bundles.py`` is
the command line; ``render_all`` is the whole job.
"""

from pipeline.generate.formatting import format_json
from pipeline.generate.render import bundle_files, render, render_all, render_distill, render_mean_teacher
from pipeline.generate.variants import Variant, default_weight, variants

__all__ = [
    "Variant",
    "bundle_files",
    "default_weight",
    "format_json",
    "render",
    "render_all",
    "render_distill",
    "render_mean_teacher",
    "variants",
]
