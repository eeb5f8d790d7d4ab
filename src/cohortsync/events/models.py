"""The Segment-spec message and the limits Segment's HTTP API sets on it."""

from __future__ import annotations

from cohortsync.store.records import Message, Rejection

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_MESSAGES",
    "MAX_MESSAGE_BYTES",
    "MAX_MESSAGE_ID_CHARS",
    "MESSAGE_TYPES",
    "Message",
    "Rejection",
]

MESSAGE_TYPES = ("track", "identify", "alias", "page", "screen", "group")
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2_500
MAX_MESSAGE_ID_CHARS = 100
