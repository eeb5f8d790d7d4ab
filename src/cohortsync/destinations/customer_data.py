"""A conversion's customer data as ad platforms' event APIs take it: identifiers hashed the
platform's way, and the browser's IP, user agent and click ids exactly as received."""

from __future__ import annotations

from typing import Any

from cohortsync.destinations.base import Conversion
from cohortsync.destinations.hashing import hash_identifier


def text(value: Any) -> str:
    """A stripped string, or "" for anything that is not one."""
    return value.strip() if isinstance(value, str) else ""


def customer_data(
    conversion: Conversion,
    platform: str,
    *,
    email: str,
    phone: str,
    ip: str,
    user_agent: str,
    click_ids: tuple[str, ...],
) -> dict[str, Any]:
    """Hashed email, phone and user id (as `external_id`) under the platform's key names, then
    the IP, user agent and click ids (from context, else properties) that are present."""
    ids = conversion.identifiers
    data: dict[str, Any] = {}
    for key, kind, source in (
        (email, "email", "email"),
        (phone, "phone", "phone"),
        ("external_id", "external_id", "user_id"),
    ):
        hashed = hash_identifier(kind, text(ids.get(source)), platform)
        if hashed:
            data[key] = [hashed]
    context, properties = conversion.context, conversion.properties
    browser = {
        ip: text(context.get("ip")),
        user_agent: text(context.get("userAgent")),
        **{c: text(context.get(c)) or text(properties.get(c)) for c in click_ids},
    }
    data.update({key: value for key, value in browser.items() if value})
    return data
