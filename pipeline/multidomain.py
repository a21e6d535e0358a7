"""Writing multi-domain datalists (HSSL pre-training): from the user's sources, and for the synthetic demo.

``prepare(...)`` is ``scripts/prepare_multidomain.py``: it aggregates the sources with
``common.data.multidomain.build_multidomain_datalist``, writes the datalist (and a report of the bad
files that were skipped) and prints the counts. ``write_demo_multidomain`` draws the synthetic set.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.data.demo import make_demo_multidomain
from common.data.multidomain import GROUPS, build_multidomain_datalist
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


def prepare(sources: Sequence[tuple[str, str, str]], out: str | Path, **options: Any) -> int:
    """Scan and decode every (name, path, group) source, write the datalist to ``out`` and print the counts;
    2 (after saying why) on bad input. ``options``: ``build_multidomain_datalist``'s keywords."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    out = Path(out)
    try:
        datalist = build_multidomain_datalist(list(sources), **options)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    report = out.with_name(out.name.removesuffix(".json") + ".skipped.json")
    atomic_write_json(out, datalist)
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
    print(f"wrote {out}: {len(datalist['items'])} items from {len(datalist['domains'])} domains")
    return 0


def write_demo_multidomain(out_dir: str | Path, seed: int = 0) -> dict:
    """Write the synthetic multi-domain set and its ``datalist.json`` (absolute paths); return the datalist."""
    out_dir = Path(out_dir).resolve()
    sources = make_demo_multidomain(out_dir, seed=seed)
    datalist = build_multidomain_datalist([(name, folder, group) for name, (folder, group) in sources.items()])
    atomic_write_json(out_dir / "datalist.json", datalist)
    return datalist
