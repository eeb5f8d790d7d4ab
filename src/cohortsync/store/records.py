"""The records the store keeps: events, rejected messages, and the identity graph's changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

Key = tuple[str, str]


class Message(NamedTuple):
    """One validated Segment message (track, identify, alias, page, screen or group).

    `timestamp_us` is the clock-skew-corrected event time every later stage uses:
    timestamp = receivedAt - (sentAt - originalTimestamp), as Segment computes it.
    A named tuple: immutable, and built several times faster than a frozen dataclass.
    """

    message_id: str
    type: str
    source: str
    timestamp_us: int
    original_timestamp_us: int
    received_at_us: int
    sent_at_us: int | None = None
    event: str | None = None
    event_key: str | None = None
    name: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None
    group_id: str | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


@dataclass(frozen=True)
class RealtimeInterest:
    """Which stored messages may change a real-time audience, as data a store checks itself
    (one that several workers write marks the profiles of these messages pending)."""

    events: frozenset[str] = frozenset()
    """Event keys of the tracks that real-time segments read."""
    profile_changes: bool = False
    """Whether identify and alias calls count (they can merge profiles and set traits): true
    while any audience is real-time."""

    def covers(self, message: Message) -> bool:
        """Whether storing `message` may change a real-time audience of its profile."""
        if message.type in ("identify", "alias"):
            return self.profile_changes
        return message.type == "track" and message.event_key in self.events


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that failed validation: it goes to quarantine with its reason, never dropped."""

    reason: str
    detail: str
    origin: str
    payload: str
    message_id: str | None = None
    source: str | None = None


@dataclass
class ProfileState:
    """What resolution needs of one profile: its limited identifiers (user_id, email) as stored,
    plus this batch's trait updates, which the store folds in by last-write-wins."""

    profile_id: str
    limited: dict[str, set[str]] = field(default_factory=dict)
    traits: dict[str, tuple[Any, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Merge:
    """Profile `source` was merged into `target` by one message, through one identifier kind."""

    source: str
    target: str
    message_id: str
    kind: str
    at_us: int


@dataclass(frozen=True)
class IdentifierRejection:
    """An identifier that could not be used; the raw value is never kept (it may be PII)."""

    message_id: str
    kind: str
    reason: str


@dataclass
class IdentityChanges:
    """Everything one batch changed, for the store to write in one transaction."""

    new_identities: list[tuple[str, str, str, int]] = field(default_factory=list)
    merges: list[Merge] = field(default_factory=list)
    rejections: list[IdentifierRejection] = field(default_factory=list)
    dirty_traits: set[str] = field(default_factory=set)
    new_profiles: set[str] = field(default_factory=set)
