#!/usr/bin/env python
"""Paired differences between two models over the same runs (seed, fold), from published summaries.

    python scripts/paired.py --a scripts/results/siim_real_px256_rotation_n54_seed1.json:px256 \\
        --b scripts/results/siim_real_px256_rotation_n54_seed1.json:px128 --metric val:dice_hmean test:dice_positive

Each side is one or more ``FILE.json:NAME`` (a pipeline row such as ``rotation_joint`` or an ablation arm);
several join their runs (seed 0 from one file, seed 1 from another). Prints, per metric, both means, the mean
of ``a - b``, its standard error and how many runs ``a`` leads, then each run's difference; runs on one side
only are listed. The pairing itself: ``pipeline/paired.py``.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.paired import PairingError, Source, joined_runs, line, paired, unpaired

DEFAULT_METRICS = ("val:dice_hmean", "val:dice_positive", "test:dice_positive")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", nargs="+", required=True, metavar="FILE.json:NAME", help="the model compared")
    parser.add_argument("--b", nargs="+", required=True, metavar="FILE.json:NAME", help="the reference")
    parser.add_argument(
        "--metric", nargs="+", default=list(DEFAULT_METRICS), metavar="SPLIT:METRIC",
        help=f"split (val, test, test_tuned) and metric (default: {' '.join(DEFAULT_METRICS)})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        metrics = []
        for text in args.metric:
            split, sep, metric = text.partition(":")
            if not sep or not metric:
                raise PairingError(f"--metric {text!r}: give SPLIT:METRIC, e.g. val:dice_hmean")
            metrics.append((split, metric))
        a = joined_runs([Source.parse(s) for s in args.a])
        b = joined_runs([Source.parse(s) for s in args.b])
        results = [paired(a, b, split, metric, (" + ".join(args.a), " + ".join(args.b))) for split, metric in metrics]
    except PairingError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"a: {' + '.join(args.a)}\nb: {' + '.join(args.b)}")
    for result in results:
        print(line(result))
        each = ", ".join(f"{seed}/{fold} {d:+.3f}" for (seed, fold), d in result["per_run"].items())
        print(f"  per run (seed/fold a - b): {each}")
    only_a, only_b = unpaired(a, b)
    for side, keys in (("a", only_a), ("b", only_b)):
        if keys:
            print(f"not paired, only in {side} ({len(keys)}): " + ", ".join(f"{s}/fold{f}" for s, f in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
