"""The real-time side of the store: profile histories, per-profile membership, timers, cursor."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cohortsync.store.base import MembershipChanges
from cohortsync.store.outbox import Route
from cohortsync.store.records import RealtimeInterest


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


class RealtimeStore(ABC):
    """Durable state of per-profile evaluation; each write is one transaction."""

    tracks_pending: bool = False
    """Whether stored events mark their profiles pending (`watch`, `pending`): a store several
    workers write; one with a single writer follows a receive-time cursor instead."""

    @abstractmethod
    def canonical(self, profile_ids: Iterable[str]) -> dict[str, str]:
        """Each id's surviving profile (itself unless merged away)."""

    @abstractmethod
    def owners(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The canonical profile holding each (kind, value) identifier, where one does."""

    @abstractmethod
    def histories(self, profile_ids: Sequence[str], events: Iterable[str]) -> list[HistoryRows]:
        """Events named in `events`, identify traits and identifiers of canonical profiles."""

    @abstractmethod
    def record_profiles(
        self,
        outcomes: Sequence[ProfileOutcome],
        scope: Sequence[tuple[str, str]],
        at_us: int,
        routes: Sequence[Route],
        cursor_us: int | None = None,
    ) -> MembershipChanges:
        """Record entries and exits of these profiles within `scope`, queue what their routes
        need, replace their timers, and move the cursor to `cursor_us`, in one transaction.
        Ids merged into an evaluated profile leave every name of the scope."""

    @abstractmethod
    def due_timers(self, now_us: int, limit: int = 10_000) -> list[tuple[str, int]]:
        """(profile, due µs) of timers due at or before `now_us`, earliest first, one per
        profile (its earliest)."""

    @abstractmethod
    def next_timer(self) -> int | None:
        """When the earliest timer is due (µs), or None."""

    @abstractmethod
    def cursor(self) -> int | None:
        """Receive time (µs) up to which every stored event has been evaluated."""

    @abstractmethod
    def set_cursor(self, received_at_us: int) -> None:
        """Move the evaluation cursor forward."""

    @abstractmethod
    def audience_runs(self) -> dict[str, int]:
        """When each audience was last computed on schedule (µs)."""

    @abstractmethod
    def record_audience_runs(self, audiences: Sequence[str], at_us: int, run_id: int) -> None:
        """Note that `audiences` were computed at `at_us` by compute run `run_id`."""

    def watch(self, interest: RealtimeInterest) -> None:
        """Which stored messages mark their profile as pending evaluation (`interest.covers`).

        Only a store that tracks pending profiles (several writers, no single cursor) uses it.
        """
        return None

    def pending(self, marked_before_us: int, limit: int = 5_000) -> list[str]:
        """Profiles with stored events that no evaluation has recorded, marked before the
        instant: left by a worker that died between storing and evaluating.

        A store with one writer follows a receive-time cursor instead and returns none. In a
        store that tracks them, `record_profiles` clears a profile's mark only if it is still
        the `version` its outcome was evaluated from, and records nothing for a profile whose
        mark moved on (its newer events are evaluated again).
        """
        return []

    @abstractmethod
    def profiles_received_since(self, received_at_us: int, events: Iterable[str]) -> list[str]:
        """Canonical profiles with an identify, alias or listed track received at or after."""
