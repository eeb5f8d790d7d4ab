"""The `Store` interface: what the rest of cohortsync asks of storage, whatever the engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from cohortsync.store.records import (
    IdentityChanges,
    Key,
    Message,
    ProfileState,
    RealtimeInterest,
    Rejection,
)
from cohortsync.store.sql import SqlStore

SummaryCoverageSets = tuple[set[str], set[tuple[str, str]], set[tuple[str, str]]]
"""Events read from the log, (event, property) pairs read from the log, summarised pairs."""


@dataclass(frozen=True)
class ResolvedBatch:
    """Messages with the profile each resolved to, and the identity changes they caused."""

    messages: Sequence[Message]
    profile_ids: Sequence[str]
    changes: IdentityChanges
    profiles: dict[str, ProfileState]


def final_targets(batch: ResolvedBatch) -> dict[str, str]:
    """Follow merge chains made within one batch (a→b, b→c) to each profile's survivor."""
    parent = {m.source: m.target for m in batch.changes.merges}
    final: dict[str, str] = {}
    for source, direct in parent.items():
        target = direct
        while target in parent:
            target = parent[target]
        final[source] = target
    return final


def not_test(column: str = "profile_id") -> str:
    """SQL true of a row whose `column` names no test profile (`validate`'s cohort)."""
    return f"{column} NOT IN (SELECT profile_id FROM test_profiles)"


NOT_TEST = not_test()
"""SQL true of a row whose `profile_id` is no test profile (`validate`'s cohort): what counts,
reports and `report` read to leave the test cohort out."""


def count_stats(query: Callable[[str], list[tuple[Any, ...]]]) -> dict[str, dict[str, int]]:
    """What `Store.stats` reports, from the store's tables through `query` (plain SQL that
    every engine runs). Test profiles (`validate`) and their events and identifiers are left
    out of every count and counted apart under `test_profiles`."""

    def grouped(sql: str, label: str) -> dict[str, int]:
        counts = {str(k): int(n) for k, n in query(sql)}
        return {"total": sum(counts.values()), label: counts}  # type: ignore[dict-item]

    profiles = query(f"SELECT count(*) FROM profiles WHERE merged_into IS NULL AND {NOT_TEST}")
    merged = query("SELECT count(*) FROM profiles WHERE merged_into IS NOT NULL")[0][0]
    rejected = grouped(
        "SELECT kind, count(*) FROM identifier_rejections GROUP BY kind ORDER BY kind", "by_kind"
    )
    identifiers = grouped(
        f"SELECT kind, count(*) FROM identities WHERE {NOT_TEST} GROUP BY kind ORDER BY kind",
        "by_kind",
    )
    identifiers["rejected"] = rejected["by_kind"]  # type: ignore[assignment]
    tests = query(
        "SELECT (SELECT count(*) FROM test_profiles), (SELECT count(*) FROM events "
        "WHERE profile_id IN (SELECT profile_id FROM test_profiles))"
    )[0]
    return {
        "events": grouped(
            f"SELECT type, count(*) FROM events WHERE {NOT_TEST} GROUP BY type ORDER BY type",
            "by_type",
        ),
        "profiles": {"total": int(profiles[0][0]), "merged_away": int(merged)},
        "identifiers": identifiers,
        "quarantined": grouped(
            "SELECT reason, count(*) FROM quarantine GROUP BY reason ORDER BY reason", "by_reason"
        ),
        "test_profiles": {"total": int(tests[0]), "events": int(tests[1])},
    }


@dataclass(frozen=True)
class ProfileView:
    """One profile as `cohortsync profile` shows it."""

    profile_id: str
    first_seen: Any
    last_seen: Any
    identifiers: list[dict[str, Any]]
    traits: dict[str, Any]
    merges: list[dict[str, Any]]
    recent_events: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class MembershipChanges:
    """What recording one compute changed: per (kind, name), how many entered and exited."""

    run_id: int
    entered: dict[tuple[str, str], int]
    exited: dict[tuple[str, str], int]


class HistoryAheadError(Exception):
    """A compute to record is for an instant before the latest recorded one: membership
    history only moves forward."""


class AlreadyStoredError(Exception):
    """Some messages of a batch were stored before; nothing of the batch was written."""

    def __init__(self, message_ids: set[str]) -> None:
        super().__init__(f"{len(message_ids)} messages were already stored")
        self.message_ids = message_ids


class StaleIdentityError(Exception):
    """Another writer changed identifiers or profiles the batch was resolved against; nothing
    of the batch was written: resolve it again (only a store with several writers raises it)."""


STALE_RETRIES = 10
"""How many times a batch is resolved again after `StaleIdentityError` before giving up."""


class Store(ABC):
    """Durable storage of events, quarantine, profiles and the identity graph."""

    dialect: str = "duckdb"
    """The SQL dialect that `profile_ids` runs (the segment compiler targets it)."""

    sql: SqlStore
    """Transactions the sync state machine (outbox, memberships) runs its statements in."""

    @abstractmethod
    def migrate(self) -> int:
        """Apply pending migrations; return the schema version now in force."""

    @abstractmethod
    def load_identity_state(
        self, keys: Iterable[Key], limited_kinds: Iterable[str]
    ) -> tuple[dict[Key, str], dict[str, ProfileState]]:
        """Owners of `keys`, and the state of every profile owning one of them."""

    @abstractmethod
    def commit_batch(self, batch: ResolvedBatch, rejections: Sequence[Rejection]) -> int:
        """Store events, identity changes and rejections atomically; return how many events.

        If any message id is already stored, nothing is written and `AlreadyStoredError` names
        them: the caller resolves identities again without them (a resent message must not
        re-apply its traits at a new receive time). When this returns, all of it is durable.
        """

    @abstractmethod
    def find_profile(self, kind: str, value: str) -> str | None:
        """The current profile of an identifier (or a profile id), or None."""

    @abstractmethod
    def profile(self, profile_id: str, recent: int = 10) -> ProfileView | None:
        """Everything known about one profile."""

    @abstractmethod
    def stats(self) -> dict[str, dict[str, int]]:
        """Counts of events by type, profiles, identifiers by kind, quarantined rows by reason."""

    @abstractmethod
    def profile_ids(self, sql: str) -> list[str]:
        """Run a compiled membership query (one `profile_id` column); the ids it returns."""

    @abstractmethod
    def query_arrow(self, sql: str) -> pa.Table:
        """Run a compiled read-only query (the last statement's rows) as one Arrow table."""

    @abstractmethod
    def flagged_members(self, sql: str, columns: Mapping[str, str]) -> dict[str, list[str]]:
        """Every segment's sorted members from one query of per-profile flags: `columns` maps
        each segment to the query's boolean column holding its flag."""

    def summary_coverage(
        self, wanted: Iterable[tuple[str, str, str]], at_us: int
    ) -> SummaryCoverageSets | None:
        """What per-profile summaries answer as of `at_us` (events and (event, property) pairs
        to read from the log, and every summarised pair), after summarising `wanted` (event
        key, property, JSON pointer); None for a store that keeps no summaries."""
        return None

    tracks_pending: bool = False
    """Whether stored events mark their profiles pending real-time evaluation (a store several
    workers write, `watch`); a store with one writer follows a receive-time cursor instead."""

    def watch(self, interest: RealtimeInterest) -> None:
        """Which stored messages mark their profile pending (only where `tracks_pending`)."""
        return None

    def forget_cached_identities(self) -> None:
        """Drop what the store keeps in memory of the identity graph, after profiles and
        identifiers were deleted outside ingest (`validate --cleanup`)."""
        return None

    @abstractmethod
    def last_compute_as_of(self) -> int | None:
        """The instant (µs) the latest compute run was for, or None before the first run."""

    @abstractmethod
    def membership(self, kind: str, name: str, at_us: int | None = None) -> list[tuple[str, bool]]:
        """(profile_id, holdout) of the members now, or as of `at_us` from history; by id."""

    @abstractmethod
    def identifiers(
        self, profile_ids: Sequence[str], kinds: Sequence[str]
    ) -> dict[str, dict[str, str]]:
        """Per profile (merged-away ids followed), its first identifier of each kind in `kinds`."""

    @abstractmethod
    def close(self) -> None:
        """Release the store."""
