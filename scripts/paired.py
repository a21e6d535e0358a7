#!/usr/bin/env python
"""Paired differences between two models over the same runs (seed, fold), from published summaries.

    python scripts/paired.py --a scripts/results/siim_real_px256_rotation_n54_seed1.json:px256 \\
        --b scripts/results/siim_real_px256_rotation_n54_seed1.json:px128 --metric val:dice_hmean test:dice_positive

Each side is one or more ``FILE.json:NAME`` (a pipeline row such as ``rotation_joint`` or an ablation arm);
several join their runs (seed 0 from one file, seed 1 from another). Prints, per metric, both means, the mean
of ``a - b``, its standard error and how many runs ``a`` leads, then each run's difference; runs on one side
only are listed. With ``--c`` and ``--d`` (both or neither) it prints the difference of differences
``(a - b) - (c - d)`` run by run instead, e.g. what 256 px adds to the student beyond what it adds to the baseline:

    python scripts/paired.py --a x.json:student_256 --b x.json:student_128 --c x.json:baseline_256 \\
        --d x.json:baseline_128

The pairing itself: ``pipeline/paired.py``.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.paired import (
    PairingError,
    Source,
    difference_of_differences,
    joined_runs,
    line,
    not_shared,
    paired,
)

DEFAULT_METRICS = ("val:dice_hmean", "val:dice_positive", "test:dice_positive")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", nargs="+", required=True, metavar="FILE.json:NAME", help="the model compared")
    parser.add_argument("--b", nargs="+", required=True, metavar="FILE.json:NAME", help="the reference")
    parser.add_argument("--c", nargs="+", metavar="FILE.json:NAME", help="with --d: subtract (c - d) from (a - b)")
    parser.add_argument("--d", nargs="+", metavar="FILE.json:NAME", help="the reference of --c")
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
        if (args.c is None) != (args.d is None):
            raise PairingError("--c and --d go together: (a - b) - (c - d) needs both")
        given = {"a": args.a, "b": args.b, **({"c": args.c, "d": args.d} if args.c else {})}
        names = {side: " + ".join(sources) for side, sources in given.items()}
        sides = {side: joined_runs([Source.parse(s) for s in sources]) for side, sources in given.items()}
        if args.c:
            results = [
                difference_of_differences(list(sides.values()), split, metric, list(names.values()))
                for split, metric in metrics
            ]
        else:
            results = [
                paired(sides["a"], sides["b"], split, metric, (names["a"], names["b"])) for split, metric in metrics
            ]
    except PairingError as e:
        raise SystemExit(f"error: {e}") from None
    print("\n".join(f"{side}: {name}" for side, name in names.items()))
    labels, compared = (("(a - b)", "(c - d)"), "(a - b) - (c - d)") if args.c else (("a", "b"), "a - b")
    for result in results:
        print(line(result, labels))
        each = ", ".join(f"{seed}/{fold} {d:+.3f}" for (seed, fold), d in result["per_run"].items())
        print(f"  per run (seed/fold {compared}): {each}")
    for side, keys in zip(sides, not_shared(list(sides.values())), strict=True):
        if keys:
            print(f"not paired, only in {side} ({len(keys)}): " + ", ".join(f"{s}/fold{f}" for s, f in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
