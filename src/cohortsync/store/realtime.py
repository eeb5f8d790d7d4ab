"""What per-profile (real-time) evaluation reads from the store and records in it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HistoryRows:
    """What evaluating one profile needs, as stored (merged-away profiles folded in)."""

    profile_id: str
    events: list[tuple[str, str, int, dict[str, Any]]] = field(default_factory=list)
    """(message_id, event_key, timestamp_us, properties)"""
    traits: dict[str, Any] = field(default_factory=dict)
    identifiers: dict[str, list[str]] = field(default_factory=dict)
    version: int = 0
    """The profile's pending mark as read with this history (0: none; see `pending`)"""


@dataclass(frozen=True)
class ProfileOutcome:
    """One profile evaluated at one instant: memberships it holds, and when it next changes."""

    profile_id: str
    members: dict[tuple[str, str], bool]
    """(kind, name) → holdout, for every name in the evaluated scope the profile belongs to"""
    timers: dict[str, int]
    """segment → the instant (µs) it next flips with no new event"""
    version: int = 0
    """`HistoryRows.version` of the history this outcome was evaluated from"""
    holding: frozenset[str] = frozenset()
    """`exits: realtime` audiences whose rule holds for the profile: a current member stays,
    one whose rule no longer holds leaves; nobody enters them here"""
