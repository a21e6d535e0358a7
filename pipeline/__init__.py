"""The experiment protocol around the bundles (not vendored into exported bundles).

``protocol`` (the two-stage protocol per seed, ``scripts/run_pipeline.py``) built from ``setting`` (what
the runs of one invocation share), ``steps`` (one resumable bundle run), ``runner`` (bundle commands,
several at a time) and ``scales`` (presets, ``--set``); ``sweep`` (lambda sweep), ``compare`` (HSSL
pre-training comparison), ``benchmark``, ``report``, ``multidomain`` (writing multi-domain datalists),
``paths`` (the repository, portable paths in published results), ``cli`` (shared arguments) and
``generate`` (the bundle generator). Teacher selection is stage 2's: ``common.distill.selection``.
"""
