#!/usr/bin/env python
"""Merge the published summaries of one study's sittings (disjoint folds or seeds) into one summary.

    python scripts/merge_results.py scripts/results/study_folds01.json scripts/results/study_folds234.json \
        --out scripts/results/study.json --label "siim_real: ..., folds 0-4 of 5"

Every part must come from ``run_pipeline.py --publish`` with the same settings, or every part from
``ablate.py --publish`` (an ablation run fold by fold with ``--only-folds``; see ``pipeline.merge``).
The merged summary is what one run over all those folds would have published; its table is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.merge import MergeError, merge
from pipeline.paths import portable_command, publish
from pipeline.report import arithmetic_line, results_table


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="+", type=Path, help="published summaries (scripts/results/*.json)")
    parser.add_argument("--out", type=Path, required=True, help="where the merged summary goes")
    parser.add_argument("--label", required=True, help="the merged study's name in the bundle READMEs")
    args = parser.parse_args(argv)
    try:
        merged = merge(args.parts, args.label, portable_command("scripts/merge_results.py", argv))
    except MergeError as e:
        raise SystemExit(f"error: {e}") from None
    publish(args.out, merged)
    print(arithmetic_line(merged["settings"]["arithmetic"]))
    for note in ("arithmetic_unrecorded", "processor_unrecorded"):
        if merged.get(note):
            print(f"{note.replace('_', ' ')}: {', '.join(merged[note])}")
    if merged["kind"] == "ablation":
        print(merged["table"])
        print(f"wrote {args.out}: {len(merged['per_run'])} runs of {len(merged['settings']['arms'])} arms")
        return 0
    print(results_table(merged["summary"], list(merged["settings"].get("external") or {})))
    print(f"wrote {args.out}: {len(merged['per_seed'])} runs ({', '.join(merged['per_seed'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
