"""Names shared by ingest, the project file and the segment language, kept at the bottom layer."""

from __future__ import annotations

import re
from functools import lru_cache

IDENTIFIER_KINDS = ("user_id", "email", "phone", "anonymous_id")
"""The identifier kinds every project knows; a project may declare more."""

_NON_WORD = re.compile(r"[^0-9a-z]+")


@lru_cache(maxsize=4096)
def event_key(name: str) -> str:
    """The snake_case key segments match on: "Order Completed" and order_completed are one event."""
    return _NON_WORD.sub("_", name.strip().lower()).strip("_")
