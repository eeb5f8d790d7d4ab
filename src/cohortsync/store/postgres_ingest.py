"""The ingest path of the Postgres store: read the identities a batch needs, commit it safely.

Several processes store batches at once, so nothing of the identity graph is cached: a batch is
resolved against the owners of its own identifiers, read just before. Its commit locks the rows
of the profiles it was resolved against (in id order, so two writers never deadlock), then
checks that those identifiers and profiles are as they were read. If another writer changed
them in between, nothing is written and `StaleIdentityError` asks for the batch to be resolved
again. Identifiers nobody owned are not locked: two writers claiming the same one collide on
its primary key, and the second is resolved again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from psycopg import errors

from cohortsync.moments import to_datetime
from cohortsync.store.base import ResolvedBatch, StaleIdentityError, final_targets
from cohortsync.store.message_table import (
    EVENT_COLUMNS,
    JSON_COLUMNS,
    MessageTable,
    messages_table,
)
from cohortsync.store.message_table import remap_profiles as _remap
from cohortsync.store.postgres_shared import copy_rows, temp_table
from cohortsync.store.records import Key, ProfileState, RealtimeInterest, Rejection

_CSV = pa_csv.WriteOptions(include_header=False, quoting_style="all_valid")
_EVENT_COPY = "COPY events ({}) FROM STDIN (FORMAT csv)".format(
    ", ".join(f'"{c}"' for c in EVENT_COLUMNS)
)


def text(value: str) -> str:
    """`value` as Postgres can store it: text cannot hold NUL, so each becomes U+FFFD."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def json_text(value: Any) -> str:
    """A JSON document as Postgres can store it (NUL characters in its strings as U+FFFD)."""
    dumped = orjson.dumps(value, default=str)
    if b"\\u0000" in dumped:
        dumped = orjson.dumps(_clean(value), default=str)
    return dumped.decode()


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def storable(events: pa.Table) -> pa.Table:
    """The events with NUL characters as U+FFFD (rare: each column is checked first)."""
    for index, name in enumerate(events.column_names):
        column = events.column(index)
        if not pa.types.is_string(column.type):
            continue
        in_json = name in JSON_COLUMNS
        found = pc.any(pc.match_substring(column, "\\u0000" if in_json else "\x00")).as_py()
        if not found:
            continue
        if in_json:
            values = column.to_pylist()
            fixed = pa.array(
                [None if v is None else json_text(orjson.loads(v)) for v in values], pa.string()
            )
        else:
            fixed = pc.replace_substring(column, "\x00", "\ufffd")
        events = events.set_column(index, name, fixed)
    return events


@dataclass
class IdentityRead:
    """What a batch was resolved against: its identifiers' owners and their limited ones."""

    keys: list[Key]
    limited_kinds: list[str]
    owners: dict[Key, str] = field(default_factory=dict)
    limited: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def states(self) -> dict[str, ProfileState]:
        """Fresh profile states for resolution (it changes them; this read must stay as read)."""
        return {
            p: ProfileState(p, limited={k: set(v) for k, v in self.limited.get(p, {}).items()})
            for p in set(self.owners.values())
        }


def read_identities(
    cur: psycopg.Cursor[Any], keys: Iterable[Key], limited_kinds: Sequence[str]
) -> IdentityRead:
    """The current owners of `keys` and the limited identifiers of those owners."""
    wanted = list(dict.fromkeys(keys))
    read = IdentityRead(wanted, list(limited_kinds))
    if not wanted:
        return read
    stored: dict[Key, list[Key]] = {}  # the key as stored → the keys asked for
    for kind, value in wanted:
        stored.setdefault((kind, text(value)), []).append((kind, value))
    cur.execute(
        "SELECT k.kind, k.value, coalesce(a.canonical_id, i.profile_id) "
        "FROM unnest(%s::text[], %s::text[]) AS k(kind, value) "
        "JOIN identities i ON i.kind = k.kind AND i.value = k.value "
        "LEFT JOIN profile_aliases a ON a.profile_id = i.profile_id",
        ([k for k, _ in stored], [v for _, v in stored]),
    )
    read.owners = {key: str(p) for k, v, p in cur.fetchall() for key in stored[(str(k), str(v))]}
    read.limited = _limited(cur, sorted(set(read.owners.values())), read.limited_kinds)
    return read


def _limited(
    cur: psycopg.Cursor[Any], owners: list[str], kinds: list[str]
) -> dict[str, dict[str, set[str]]]:
    if not owners or not kinds:
        return {}
    cur.execute(
        "SELECT profile_id, kind, value FROM identities "
        "WHERE profile_id = ANY(%s) AND kind = ANY(%s)",
        (owners, kinds),
    )
    found: dict[str, dict[str, set[str]]] = {}
    for profile_id, kind, value in cur.fetchall():
        found.setdefault(str(profile_id), {}).setdefault(str(kind), set()).add(str(value))
    return found


def lock_and_check(cur: psycopg.Cursor[Any], read: IdentityRead) -> None:
    """Lock the profiles the batch was resolved against; raise if any changed since the read."""
    owners = sorted(set(read.owners.values()))
    if owners:
        cur.execute(
            "SELECT profile_id FROM profiles WHERE profile_id = ANY(%s) "
            "ORDER BY profile_id FOR NO KEY UPDATE",
            (owners,),
        )
        cur.fetchall()
    now = read_identities(cur, read.keys, read.limited_kinds)
    if now.owners != read.owners or now.limited != read.limited:
        raise StaleIdentityError


def events_csv(events: pa.Table) -> pa.Buffer:
    """The events as CSV for COPY, written by Arrow (no Python object per row); made before
    the transaction opens, so it stays short."""
    sink = pa.BufferOutputStream()
    # One chunk per column: Arrow's CSV writer emits NUL bytes for some empty chunks.
    pa_csv.write_csv(events.combine_chunks(), sink, _CSV)
    return sink.getvalue()


def copy_events(cur: psycopg.Cursor[Any], csv: pa.Buffer) -> None:
    """Append events with one COPY."""
    with cur.copy(_EVENT_COPY) as copy:
        copy.write(memoryview(csv))


def events_table(batch: ResolvedBatch, final: dict[str, str]) -> pa.Table:
    """The batch's events in the layout of the `events` table, merged-away profiles followed."""
    if isinstance(batch.messages, MessageTable):
        return storable(_remap(batch.messages.table, final))
    return storable(messages_table(batch.messages, [final.get(p, p) for p in batch.profile_ids]))


def unique_violation(exc: errors.UniqueViolation) -> str:
    """The table whose key a conflicting insert hit."""
    return str(exc.diag.table_name or "")


def write_profiles(
    cur: psycopg.Cursor[Any], batch: ResolvedBatch, final: dict[str, str], now: datetime
) -> None:
    """New profiles, then merges: aliases, merged flags, identifiers and traits move over."""
    created = sorted(batch.changes.new_profiles)
    if created:
        copy_rows(cur, "profiles", ("profile_id", "created_at"), ((p, now) for p in created))
    merges = batch.changes.merges
    if not merges:
        return
    temp_table(
        cur,
        "_merges",
        (
            ("source", "TEXT"),
            ("target", "TEXT"),
            ("merged_at", "TIMESTAMPTZ"),
            ("message_id", "TEXT"),
            ("kind", "TEXT"),
            ("direct_target", "TEXT"),
        ),
        (
            (
                m.source,
                final.get(m.target, m.target),
                to_datetime(m.at_us),
                text(m.message_id),
                m.kind,
                m.target,
            )
            for m in merges
        ),
    )
    for sql in (
        "INSERT INTO merges SELECT merged_at, source, direct_target, message_id, kind FROM _merges",
        # Profiles merged into a source before follow it to the survivor (their merged_into is
        # their canonical profile, as their alias row says).
        "UPDATE profiles SET merged_into = m.target FROM _merges m JOIN profile_aliases a "
        "ON a.canonical_id = m.source WHERE profiles.profile_id = a.profile_id",
        "UPDATE profiles SET merged_into = m.target FROM _merges m "
        "WHERE profiles.profile_id = m.source",
        "UPDATE identities SET profile_id = m.target FROM _merges m "
        "WHERE identities.profile_id = m.source",
        "UPDATE profile_aliases SET canonical_id = m.target FROM _merges m "
        "WHERE profile_aliases.canonical_id = m.source",
        # A source is a live profile, so it has no alias row yet.
        "INSERT INTO profile_aliases SELECT source, target FROM _merges",
        # The survivor takes the merged profiles' stored traits (latest wins).
        "INSERT INTO profile_traits "
        "SELECT DISTINCT ON (m.target, t.name) m.target, t.name, t.value, t.updated_at "
        "FROM profile_traits t JOIN _merges m ON t.profile_id = m.source "
        "ORDER BY m.target, t.name, t.updated_at DESC "
        "ON CONFLICT (profile_id, name) DO UPDATE SET "
        "value = excluded.value, updated_at = excluded.updated_at "
        "WHERE excluded.updated_at > profile_traits.updated_at",
        "DELETE FROM profile_traits WHERE profile_id IN (SELECT source FROM _merges)",
        "DROP TABLE _merges",
    ):
        cur.execute(sql)  # type: ignore[arg-type]  # our SQL, no values


def write_identities(cur: psycopg.Cursor[Any], batch: ResolvedBatch, final: dict[str, str]) -> None:
    """Identifiers nobody owned, in key order (two writers wait on each other in one order)."""
    rows = sorted(
        (kind, text(value), final.get(owner, owner), to_datetime(first))
        for kind, value, owner, first in batch.changes.new_identities
    )
    if rows:
        copy_rows(cur, "identities", ("kind", "value", "profile_id", "first_seen"), rows)


def write_traits(cur: psycopg.Cursor[Any], batch: ResolvedBatch, final: dict[str, str]) -> None:
    """This batch's trait updates, last write (by event time) winning over what is stored."""
    rows: list[tuple[str, str, str, datetime]] = []
    for profile_id in sorted({final.get(p, p) for p in batch.changes.dirty_traits}):
        state = batch.profiles.get(profile_id)
        if state is None:
            continue
        for name, (value, updated) in sorted(state.traits.items()):
            rows.append((profile_id, text(name), json_text(value), to_datetime(updated)))
    if not rows:
        return
    cur.execute(
        "INSERT INTO profile_traits "
        "SELECT * FROM unnest(%s::text[], %s::text[], %s::jsonb[], %s::timestamptz[]) "
        "ON CONFLICT (profile_id, name) DO UPDATE SET "
        "value = excluded.value, updated_at = excluded.updated_at "
        "WHERE excluded.updated_at >= profile_traits.updated_at",
        [list(column) for column in zip(*rows, strict=True)],
    )


def write_rejections(
    cur: psycopg.Cursor[Any],
    batch: ResolvedBatch,
    rejections: Sequence[Rejection],
    now: datetime,
) -> None:
    """Quarantined messages (once per bad row), and unusable identifiers (first reason)."""
    if rejections:
        rows = sorted({_quarantine_id(r): r for r in rejections}.items())
        cur.execute(
            "INSERT INTO quarantine SELECT q, %s, s, o, r, d, m, p FROM unnest("
            "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[]"
            ") AS u(q, s, o, r, d, m, p) ON CONFLICT DO NOTHING",
            (
                now,
                [q for q, _ in rows],
                [_maybe(r.source) for _, r in rows],
                [text(r.origin) for _, r in rows],
                [r.reason for _, r in rows],
                [text(r.detail) for _, r in rows],
                [_maybe(r.message_id) for _, r in rows],
                [text(r.payload) for _, r in rows],
            ),
        )
    if batch.changes.rejections:
        first = {(r.message_id, r.kind): r for r in reversed(batch.changes.rejections)}
        kept = list(first.values())[::-1]
        copy_rows(
            cur,
            "identifier_rejections",
            ("message_id", "kind", "reason"),
            ((text(r.message_id), r.kind, text(r.reason)) for r in kept),
        )


def mark_pending(
    cur: psycopg.Cursor[Any],
    batch: ResolvedBatch,
    events: pa.Table,
    interest: RealtimeInterest | None,
    now: datetime,
) -> None:
    """Mark the profile of every relevant stored message as pending real-time evaluation, and
    every survivor of a merge the batch made (its history now holds the merged profile's)."""
    if interest is None:
        profiles = {str(p) for p in pc.unique(events.column("profile_id")).to_pylist()}
    else:
        final = events.column("profile_id").to_pylist()
        profiles = {
            str(p) for m, p in zip(batch.messages, final, strict=True) if interest.covers(m)
        }
        profiles.update(final_targets(batch).values())
    if not profiles:
        return
    cur.execute(
        # Versions come from a sequence, so a mark cleared and made again never repeats one
        # that an earlier read saw; marked_at stays the oldest unevaluated moment.
        "INSERT INTO realtime_pending (profile_id, version, marked_at) "
        "SELECT p, nextval('realtime_versions'), %s FROM unnest(%s::text[]) AS u(p) ORDER BY p "
        "ON CONFLICT (profile_id) DO UPDATE SET version = excluded.version",
        (now, sorted(profiles)),
    )


def stored_already(cur: psycopg.Cursor[Any], batch: ResolvedBatch) -> set[str]:
    """Which of the batch's message ids the events table holds (as given, NUL and all)."""
    messages = batch.messages
    if isinstance(messages, MessageTable):
        given = [str(v) for v in messages.table.column("message_id").to_pylist()]
    else:
        given = [m.message_id for m in messages]
    asked: dict[str, list[str]] = {}
    for message_id in given:
        asked.setdefault(text(message_id), []).append(message_id)
    cur.execute("SELECT message_id FROM events WHERE message_id = ANY(%s)", (list(asked),))
    return {given for (found,) in cur.fetchall() for given in asked[str(found)]}


def _maybe(value: str | None) -> str | None:
    return None if value is None else text(value)


def _quarantine_id(rejection: Rejection) -> str:
    """The same bad row from the same place is quarantined once, however often it is re-sent."""
    key = "\x1f".join((rejection.source or "", rejection.origin, rejection.payload))
    return hashlib.sha256(key.encode()).hexdigest()[:32]
