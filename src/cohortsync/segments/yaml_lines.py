"""Where a value of the project file sits (its line, for `file:line:` errors), the value as
plain Python, and the name a misspelt one was probably meant to be."""

from __future__ import annotations

import difflib
from datetime import date
from typing import Any


def node_line(node: Any, fallback: int) -> int:
    """The 1-based line of a ruamel node, else `fallback`."""
    lc = getattr(node, "lc", None)
    return lc.line + 1 if lc is not None and lc.line is not None else fallback


def key_line(node: Any, key: Any, fallback: int) -> int:
    """The 1-based line of a mapping key, else `fallback`."""
    try:
        return int(node.lc.key(key)[0]) + 1
    except (AttributeError, KeyError, TypeError):
        return fallback


def item_line(node: Any, index: int, fallback: int) -> int:
    """The 1-based line of a sequence item, else `fallback`."""
    try:
        return int(node.lc.item(index)[0]) + 1
    except (AttributeError, KeyError, TypeError, IndexError):
        return fallback


def plain(value: Any) -> Any:
    """A ruamel scalar or sequence as a plain, hashable Python value."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list | tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def suggest(name: str, known: list[str]) -> str:
    """' (did you mean x?)' for the closest known name, or nothing."""
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""
