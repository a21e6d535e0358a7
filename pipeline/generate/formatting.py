"""The one JSON style of the bundle configs, hand-written (the baseline) and generated alike.

4-space indent, and a container goes on one line only where that reads better and fits in
``WIDTH`` columns (with its key, indent and a trailing comma):

- the top level and its direct values are always expanded (one setting, import or run step a line);
- deeper lists of scalars stay inline (``[16, 32, 64]``, ``["image", "label"]``) unless they hold
  ``$`` expressions (code: one a line);
- a dict inside a list stays inline when its values are scalars or such inline lists (a transform,
  a handler);
- a dict inside a dict stays inline when it has at most ``SMALL_DICT`` keys, all scalars and no
  expressions (``{"_target_": "SimpleInferer"}``, ``{"model": "@network"}``).

``format_json(json.loads(text))`` keeps the content: only whitespace differs.
"""

from __future__ import annotations

import json
from typing import Any

WIDTH = 120
INDENT = 4
SMALL_DICT = 3


def format_json(config: Any) -> str:
    """``config`` as JSON text in the bundle style, with a final newline."""
    return _render(config, depth=0, used=0, in_list=False) + "\n"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list))


def _is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("$")


def _inline_list(value: list[Any]) -> bool:
    return all(_is_scalar(v) and not _is_expression(v) for v in value)


def _may_inline(value: dict[str, Any] | list[Any], depth: int, in_list: bool) -> bool:
    """Whether the container's shape allows one line (the width is checked by the caller)."""
    if depth < 2:
        return False
    if isinstance(value, list):
        return _inline_list(value)
    if in_list:
        return all(_is_scalar(v) or (isinstance(v, list) and _inline_list(v)) for v in value.values())
    return len(value) <= SMALL_DICT and all(_is_scalar(v) and not _is_expression(v) for v in value.values())


def _render(value: Any, depth: int, used: int, in_list: bool) -> str:
    """``value`` at nesting ``depth``, starting ``used`` columns into its first line."""
    if _is_scalar(value) or not value:
        return _dumps(value)
    one_line = _dumps(value)
    if _may_inline(value, depth, in_list) and used + len(one_line) + 1 <= WIDTH:
        return one_line
    pad = " " * (INDENT * (depth + 1))
    if isinstance(value, list):
        items = [pad + _render(v, depth + 1, len(pad), in_list=True) for v in value]
        open_, close = "[", "]"
    else:
        items = []
        for key, v in value.items():
            head = f"{pad}{_dumps(key)}: "
            items.append(head + _render(v, depth + 1, len(head), in_list=False))
        open_, close = "{", "}"
    return open_ + "\n" + ",\n".join(items) + "\n" + " " * (INDENT * depth) + close
