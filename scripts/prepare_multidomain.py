#!/usr/bin/env python
"""Aggregate unlabelled images of several domains into one multi-domain datalist (HSSL pre-training).

    python scripts/prepare_multidomain.py --source cxr=/data/cxr:xray --source brain=/data/mr:mr \\
        --source chest_ct=/data/ct:ct --out multidomain.json --stride 4

--source is NAME=PATH:GROUP (the group follows the last ':', so paths may contain ':'); groups are
xray, ct, mr, us, other. Every image file under PATH is decoded once (use --workers to parallelise):
2D files give one item, multi-frame DICOM and 3D NIfTI one item per frame/slice (every --stride,
NIfTI along RAS --axis), leaving out empty slices. Bad input stops the run naming the file or
source; --skip-bad leaves bad files out and lists them in <out>.skipped.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data.multidomain import CT_WINDOW, GROUPS, build_multidomain_datalist
from common.utils.io import atomic_write_json


def parse_source(text: str) -> tuple[str, str, str]:
    """``NAME=PATH:GROUP`` -> (name, path, group); the group is split on the last ':'."""
    name, eq, rest = text.partition("=")
    path, colon, group = rest.rpartition(":")
    if not eq or not colon or not name.strip() or not path or not group:
        raise ValueError(f"--source {text!r}: expected NAME=PATH:GROUP (GROUP one of {', '.join(GROUPS)})")
    return name.strip(), path, group.strip()


def format_table(datalist: dict) -> str:
    """Counts per domain (items, empty slices left out) and per group, as aligned text."""
    width = max(len("domain"), *(len(d) for d in datalist["domains"]))
    skipped_by_domain: dict[str, int] = {}
    folders = {d: src["folder"] for d, src in datalist["sources"].items()}
    for entry in datalist["skipped"]:
        for domain, folder in folders.items():
            if entry["file"] == folder or entry["file"].startswith(folder.rstrip(os.sep) + os.sep):
                skipped_by_domain[domain] = skipped_by_domain.get(domain, 0) + 1
    lines = [f"{'domain':<{width}}  {'group':<5}  {'items':>6}  {'empty slices':>12}  {'bad files':>9}"]
    for domain in datalist["domains"]:
        lines.append(
            f"{domain:<{width}}  {datalist['sources'][domain]['group']:<5}  {datalist['counts']['domain'][domain]:>6}  "
            f"{datalist['skipped_empty_slices'][domain]:>12}  {skipped_by_domain.get(domain, 0):>9}"
        )
    lines.append(f"{'total':<{width}}  {'':<5}  {len(datalist['items']):>6}  "
                 f"{sum(datalist['skipped_empty_slices'].values()):>12}  {len(datalist['skipped']):>9}")  # fmt: skip
    lines.append("")
    lines.append(f"{'group':<5}  {'items':>6}")
    lines += [f"{group:<5}  {n:>6}" for group, n in datalist["counts"]["group"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, scan and decode every source, write the datalist; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", required=True, metavar="NAME=PATH:GROUP", help="a domain (repeat)")
    parser.add_argument("--out", type=Path, required=True, help="datalist JSON to write")
    parser.add_argument("--axis", type=int, default=2, help="RAS axis NIfTI volumes are sliced along (2: axial)")
    parser.add_argument("--stride", type=int, default=1, help="take every N-th frame/slice of volumes")
    parser.add_argument(
        "--min-foreground", type=float, default=0.05, help="leave out slices with less foreground (pixels > 0.1)"
    )
    parser.add_argument(
        "--ct-window", type=float, nargs=2, default=CT_WINDOW, metavar=("LOW", "HIGH"), help="CT HU window"
    )
    parser.add_argument("--skip-bad", action="store_true", help="skip bad files and report them instead of failing")
    parser.add_argument(
        "--exclude", nargs="*", default=[], metavar="GLOB", help="file names to leave out (e.g. '*mask*')"
    )
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes for decoding")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        sources = [parse_source(s) for s in args.source]
        datalist = build_multidomain_datalist(
            sources,
            axis=args.axis,
            stride=args.stride,
            min_foreground=args.min_foreground,
            skip_bad=args.skip_bad,
            ct_window=tuple(args.ct_window),
            workers=args.workers,
            exclude=args.exclude,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    report = args.out.with_name(args.out.name.removesuffix(".json") + ".skipped.json")
    atomic_write_json(args.out, datalist)
    print(format_table(datalist))
    if datalist["skipped"]:
        atomic_write_json(report, {"count": len(datalist["skipped"]), "skipped": datalist["skipped"]})
        print(f"skipped {len(datalist['skipped'])} bad file(s): listed in {report}")
        for entry in datalist["skipped"]:
            print(f"  - {entry['file']}: {entry['reason']}")
    elif report.exists():
        report.unlink()  # a stale report from an earlier run would describe other data
    if datalist["ignored_files"]:
        print(f"ignored {len(datalist['ignored_files'])} non-image file(s)")
    print(f"wrote {args.out}: {len(datalist['items'])} items from {len(datalist['domains'])} domains")
    return 0


if __name__ == "__main__":
    sys.exit(main())
