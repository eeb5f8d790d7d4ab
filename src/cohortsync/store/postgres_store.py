"""The production store: Postgres, written by any number of processes at once.

Same tables and same promises as the DuckDB store (`store/base.py`); what differs is how
writers coexist: each thread has its own connection, ids come from sequences, and where two
processes must not interleave (one profile's evaluation, one destination's claims, one compute
run) a transaction-scoped advisory lock orders them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import errors

from cohortsync.moments import to_datetime, to_micros
from cohortsync.store import postgres_ingest as ingest
from cohortsync.store.base import (
    AlreadyStoredError,
    ProfileView,
    ResolvedBatch,
    StaleIdentityError,
    Store,
    count_stats,
    final_targets,
)
from cohortsync.store.postgres_schema import MIGRATIONS
from cohortsync.store.postgres_shared import PgConnections, PgSql, advisory_lock
from cohortsync.store.records import Key, ProfileState, RealtimeInterest, Rejection


class PostgresStore(Store):
    """A `Store` in one Postgres database (or schema: set `options=-csearch_path=…`)."""

    tracks_pending = True

    dialect = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self._db = PgConnections(url)
        self.sql = PgSql(self._db)
        self.interest: RealtimeInterest | None = None
        """Stored messages that mark their profile pending (None: every message)."""
        self._reads = threading.local()  # what this thread's next batch was resolved against

    def migrate(self) -> int:
        with self._db.transaction() as cur:
            advisory_lock(cur, "cohortsync:migrate")  # two processes starting at once
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, description TEXT, applied_at TIMESTAMPTZ)"
            )
            cur.execute("SELECT version FROM schema_migrations")
            done = {int(row[0]) for row in cur.fetchall()}
            for version, description, sql in MIGRATIONS:
                if version in done:
                    continue
                cur.execute(sql.encode())
                cur.execute(
                    "INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                    (version, description, datetime.now(UTC)),
                )
            cur.execute("SELECT max(version) FROM schema_migrations")
            row = cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query with bound parameters (never user values spliced into SQL)."""
        return self._db.query(sql, params)

    def load_identity_state(
        self, keys: Iterable[Key], limited_kinds: Iterable[str]
    ) -> tuple[dict[Key, str], dict[str, ProfileState]]:
        # Read fresh for every batch: other processes change the graph, so no cache holds.
        with self._db.transaction() as cur:
            read = ingest.read_identities(cur, keys, list(limited_kinds))
        self._reads.last = read
        return dict(read.owners), read.states()

    def commit_batch(self, batch: ResolvedBatch, rejections: Sequence[Rejection]) -> int:
        read: ingest.IdentityRead | None = getattr(self._reads, "last", None)
        self._reads.last = None
        final = final_targets(batch)
        events = ingest.events_table(batch, final)
        csv = ingest.events_csv(events) if events.num_rows else None
        try:
            with self._db.transaction() as cur:
                if read is not None:
                    ingest.lock_and_check(cur, read)
                now = datetime.now(UTC)
                if csv is not None:
                    ingest.copy_events(cur, csv)
                ingest.write_profiles(cur, batch, final, now)
                ingest.write_identities(cur, batch, final)
                ingest.write_traits(cur, batch, final)
                ingest.write_rejections(cur, batch, rejections, now)
                if events.num_rows:
                    ingest.mark_pending(cur, batch, events, self.interest, now)
        except errors.UniqueViolation as exc:
            if ingest.unique_violation(exc) != "events":
                raise StaleIdentityError from None  # another writer claimed an identifier first
            with self._db.transaction() as cur:  # the batch was rolled back: name what was there
                known = ingest.stored_already(cur, batch)
            raise AlreadyStoredError(known) from None
        except errors.DeadlockDetected:
            raise StaleIdentityError from None  # two writers met on resent messages
        return int(events.num_rows)

    def find_profile(self, kind: str, value: str) -> str | None:
        if kind == "profile_id":
            rows = self._db.query(
                "SELECT coalesce(a.canonical_id, p.profile_id) FROM profiles p "
                "LEFT JOIN profile_aliases a USING (profile_id) WHERE p.profile_id = %s",
                (value,),
            )
        else:
            rows = self._db.query(
                "SELECT profile_id FROM identities WHERE kind = %s AND value = %s", (kind, value)
            )
        return str(rows[0][0]) if rows else None

    def profile(self, profile_id: str, recent: int = 10) -> ProfileView | None:
        with self._db.transaction() as cur:  # one snapshot for every part of the view
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return _profile_view(cur, profile_id, recent)

    def stats(self) -> dict[str, dict[str, int]]:
        return count_stats(self._db.query)

    def profile_ids(self, sql: str) -> list[str]:
        with self._db.transaction() as cur:
            _last_result(cur, sql)
            rows = cur.fetchall() if cur.description else []
        return [str(r[0]) for r in rows]

    def query_arrow(self, sql: str) -> pa.Table:
        with self._db.transaction() as cur:
            _last_result(cur, sql)
            names = [d.name for d in cur.description or ()]
            rows = cur.fetchall() if cur.description else []
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
        return pa.table(
            {name: pa.array(values) for name, values in zip(names, columns, strict=True)}
        )

    def flagged_members(self, sql: str, columns: Mapping[str, str]) -> dict[str, list[str]]:
        """Every segment's sorted members from one query of per-profile flags."""
        with self._db.transaction() as cur:
            _last_result(cur, sql)
            names = [d.name for d in cur.description or ()]
            rows = cur.fetchall()
        ids = names.index("profile_id")
        found: dict[str, list[str]] = {}
        for name, column in columns.items():
            flag = names.index(column)
            found[name] = sorted(str(r[ids]) for r in rows if r[flag])
        return found

    def last_compute_as_of(self) -> int | None:
        rows = self._db.query("SELECT max(as_of) FROM compute_runs")
        return to_micros(rows[0][0]) if rows and rows[0][0] is not None else None

    def membership(self, kind: str, name: str, at_us: int | None = None) -> list[tuple[str, bool]]:
        if at_us is None:
            rows = self._db.query(
                "SELECT profile_id, holdout FROM memberships "
                "WHERE kind = %s AND name = %s AND exited_at IS NULL ORDER BY profile_id",
                (kind, name),
            )
        else:
            moment = to_datetime(at_us)
            rows = self._db.query(
                "SELECT profile_id, holdout FROM memberships WHERE kind = %s AND name = %s "
                "AND entered_at <= %s AND (exited_at IS NULL OR exited_at > %s) "
                "ORDER BY profile_id",
                (kind, name, moment, moment),
            )
        return sorted((str(p), bool(h)) for p, h in rows)

    def identifiers(
        self, profile_ids: Sequence[str], kinds: Sequence[str]
    ) -> dict[str, dict[str, str]]:
        rows = self._db.query(
            "SELECT DISTINCT ON (i.profile_id, x.kind) i.profile_id, x.kind, x.value "
            "FROM unnest(%s::text[]) AS i(profile_id) "
            "LEFT JOIN profile_aliases a ON a.profile_id = i.profile_id "
            "JOIN identities x ON x.profile_id = coalesce(a.canonical_id, i.profile_id) "
            "WHERE x.kind = ANY(%s) "
            "ORDER BY i.profile_id, x.kind, x.first_seen, x.value",
            (list(profile_ids), list(kinds)),
        )
        found: dict[str, dict[str, str]] = {}
        for profile_id, kind, value in rows:
            found.setdefault(str(profile_id), {})[str(kind)] = str(value)
        return found

    def watch(self, interest: RealtimeInterest) -> None:
        self.interest = interest

    def close(self) -> None:
        self._db.close()


def _last_result(cur: psycopg.Cursor[Any], sql: str) -> None:
    """Run compiled SQL (perhaps several statements) and move to its last statement's rows."""
    cur.execute(sql.encode())
    while cur.nextset():
        pass


def _utc(moment: Any) -> Any:
    """A stored instant in UTC, whatever the session's time zone."""
    return moment.astimezone(UTC) if isinstance(moment, datetime) else moment


def _profile_view(cur: psycopg.Cursor[Any], profile_id: str, recent: int) -> ProfileView | None:
    """One live profile as `cohortsync profile` shows it (None if unknown or merged away)."""

    def rows(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        cur.execute(sql, params)  # type: ignore[arg-type]  # our SQL, bound values
        return cur.fetchall()

    if not rows("SELECT 1 FROM profiles WHERE profile_id = %s AND merged_into IS NULL", profile_id):
        return None
    # Events of the profile and of every profile merged into it.
    owned = (
        "profile_id = %s OR profile_id IN (SELECT profile_id FROM profile_aliases "
        "WHERE canonical_id = %s)"
    )
    first, last = rows(
        f'SELECT min("timestamp"), max("timestamp") FROM events WHERE {owned}',
        profile_id,
        profile_id,
    )[0]
    identifiers = [
        {"kind": k, "value": v, "first_seen": _utc(f)}
        for k, v, f in rows(
            "SELECT kind, value, first_seen FROM identities WHERE profile_id = %s "
            "ORDER BY kind, first_seen, value",
            profile_id,
        )
    ]
    traits = dict(
        rows(
            "SELECT name, value FROM profile_traits WHERE profile_id = %s ORDER BY name", profile_id
        )
    )
    merges = [
        {
            "merged_at": _utc(at),
            "from_profile": src,
            "into_profile": dst,
            "via": kind,
            "message_id": mid,
        }
        for at, src, dst, kind, mid in rows(
            "SELECT merged_at, from_profile, into_profile, identifier_kind, message_id "
            "FROM merges WHERE into_profile = %s OR into_profile IN "
            "(SELECT profile_id FROM profile_aliases WHERE canonical_id = %s) "
            "ORDER BY merged_at",
            profile_id,
            profile_id,
        )
    ]
    events = [
        {"timestamp": _utc(ts), "type": typ, "event": ev or name, "message_id": mid}
        for ts, typ, ev, name, mid in rows(
            f'SELECT "timestamp", type, event, name, message_id FROM events WHERE {owned} '
            'ORDER BY "timestamp" DESC LIMIT %s',
            profile_id,
            profile_id,
            recent,
        )
    ]
    return ProfileView(profile_id, _utc(first), _utc(last), identifiers, traits, merges, events)
