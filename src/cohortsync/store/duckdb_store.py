"""The embedded default store: one DuckDB file, written only in Arrow batches."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cohortsync.store import duckdb_summaries as summaries
from cohortsync.store.base import (
    AlreadyStoredError,
    ProfileView,
    ResolvedBatch,
    Store,
    SummaryCoverageSets,
    count_stats,
    final_targets,
)
from cohortsync.store.duckdb_compute import flagged_members, query_arrow
from cohortsync.store.duckdb_schema import MIGRATIONS
from cohortsync.store.duckdb_shared import DuckDBSql
from cohortsync.store.identity_cache import IdentityCache
from cohortsync.store.message_table import MessageTable, messages_table, remap_profiles
from cohortsync.store.records import Key, ProfileState, Rejection

_TS = pa.timestamp("us", tz="UTC")
MEMORY_LIMIT_ENV = "COHORTSYNC_DUCKDB_MEMORY_LIMIT"
THREADS_ENV = "COHORTSYNC_DUCKDB_THREADS"


def engine_settings(
    memory_limit: str | None, threads: int | None
) -> dict[str, str | bool | int | float | list[str]]:
    """DuckDB settings of the store: given ones first, else `$COHORTSYNC_DUCKDB_MEMORY_LIMIT`
    and `$COHORTSYNC_DUCKDB_THREADS`, else DuckDB's own (80 % of RAM; one thread a core)."""
    settings: dict[str, str | bool | int | float | list[str]] = {}
    limit = memory_limit or os.environ.get(MEMORY_LIMIT_ENV)
    if limit:
        settings["memory_limit"] = limit
    count = threads or os.environ.get(THREADS_ENV)
    if count:
        settings["threads"] = str(count)
    return settings


class _SomeAlreadyStoredError(Exception):
    """Raised inside the transaction to roll it back when the insert skipped known ids."""


class DuckDBStore(Store):
    """A `Store` in one DuckDB file; one writer at a time, guarded by a lock."""

    def __init__(
        self, path: str | Path, *, memory_limit: str | None = None, threads: int | None = None
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(str(self.path), config=engine_settings(memory_limit, threads))
        # Rows committed in small batches wait in the WAL until a checkpoint merges them into the
        # table, rewriting its last, partial row group each time. At the default 16 MB that
        # happens every ~35k events and rewrites most rows twice; at 64 MB (more than a row
        # group of events) most are written once: ~12 % less CPU for HTTP ingest, at the price
        # of a longer WAL replay after a crash (~1 s) and rarer but longer checkpoint pauses.
        self._con.execute("SET checkpoint_threshold = '64MB'")
        self._lock = threading.RLock()
        self.sql = DuckDBSql(self._lock, self._transaction)
        self._identities: IdentityCache | None = None
        self._summary_rows: int | None = None  # rows after the last compaction (None: unread)
        self._summary_pending = 0  # rows appended since
        # What the summaries hold, known without a query: the summarised (event, property)
        # pairs and the latest timestamp summarised (µs); None: read them when next needed.
        self._summarised: set[tuple[str, str]] | None = None
        self._summarised_until: int | None = None

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            self._con.execute("BEGIN TRANSACTION")
            try:
                yield self._con
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query with bound parameters (never user values spliced into SQL)."""
        with self._lock:
            return self._con.execute(sql, list(params)).fetchall()

    def migrate(self) -> int:
        with self._transaction() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, description VARCHAR, applied_at TIMESTAMPTZ)"
            )
            done = {
                row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()
            }
            for version, description, sql in MIGRATIONS:
                if version in done:
                    continue
                con.execute(sql)
                con.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    [version, description, datetime.now(UTC)],
                )
            row = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def load_identity_state(
        self, keys: Iterable[Key], limited_kinds: Iterable[str]
    ) -> tuple[dict[Key, str], dict[str, ProfileState]]:
        kinds = list(limited_kinds)
        with self._lock:
            if self._identities is None or self._identities.limited_kinds != frozenset(kinds):
                rows = self._con.execute("SELECT kind, value, profile_id FROM identities")
                identities = rows.fetchall()
                absorbers = self._con.execute("SELECT DISTINCT canonical_id FROM profile_aliases")
                absorbed = [r[0] for r in absorbers.fetchall()]
                traits = self._con.execute("SELECT DISTINCT profile_id FROM profile_traits")
                with_traits = [r[0] for r in traits.fetchall()]
                self._identities = IdentityCache(identities, kinds, absorbed, with_traits)
            return self._identities.lookup(keys)

    def commit_batch(self, batch: ResolvedBatch, rejections: Sequence[Rejection]) -> int:
        final = final_targets(batch)
        if isinstance(batch.messages, MessageTable):  # built in bulk: append it as it is
            events = remap_profiles(batch.messages.table, final)
        else:
            events = messages_table(batch.messages, [final.get(p, p) for p in batch.profile_ids])
        with self._lock:
            try:
                inserted, traits_written = self._commit(batch, rejections, events, final)
            except _SomeAlreadyStoredError:
                # Rare (a resent message): the batch was rolled back; name what was there.
                ids = pa.table({"message_id": events.column("message_id")})
                sql = "SELECT message_id FROM events SEMI JOIN _batch USING (message_id)"
                old = _query_with(self._con, ids, sql)
                raise AlreadyStoredError({r[0] for r in old}) from None
        if self._identities is not None:
            self._identities.apply(batch.changes, final, traits_written)
        return inserted

    def forget_cached_identities(self) -> None:
        with self._lock:
            self._identities = None

    def _commit(
        self,
        batch: ResolvedBatch,
        rejections: Sequence[Rejection],
        events: pa.Table,
        final: dict[str, str],
    ) -> tuple[int, set[str]]:
        """Write the batch in one transaction; how many events, and whose traits were written."""
        now = datetime.now(UTC)
        with self._transaction() as con:
            inserted = 0
            if events.num_rows:
                try:
                    # A plain insert checks the key ~3× faster than ON CONFLICT DO NOTHING;
                    # a resent message is the rare case, handled by rolling back.
                    con.from_arrow(events).insert_into("events")
                except duckdb.ConstraintException:
                    raise _SomeAlreadyStoredError from None
                inserted = events.num_rows
                self._summarise(con, events)
            self._write_profiles(con, batch, final, now)
            self._write_identities(con, batch, final)
            traits_written = self._write_traits(con, batch, final)
            if rejections:
                self._write_quarantine(con, rejections, now)
            if batch.changes.rejections:
                # One row per message and kind (the first reason); the messages are new, as
                # their events were just inserted, so a plain insert cannot clash.
                first = {(r.message_id, r.kind): r for r in reversed(batch.changes.rejections)}
                rows = list(first.values())[::-1]
                table = pa.table(
                    {
                        "message_id": [r.message_id for r in rows],
                        "kind": [r.kind for r in rows],
                        "reason": [r.reason for r in rows],
                    }
                )
                con.from_arrow(table).insert_into("identifier_rejections")
        return inserted, traits_written

    def _summarise(self, con: duckdb.DuckDBPyConnection, events: pa.Table) -> None:
        """Append the batch's event summaries; fold them once enough rows piled up."""
        if self._summarised is None:
            self._summarised = summaries.summarised(con)
        if self._summary_rows is None:
            rows = con.execute("SELECT count(*) FROM event_summaries").fetchall()
            self._summary_rows = int(rows[0][0])
        kinds = {event for event, _ in self._summarised}
        self._summary_pending += summaries.append_batch(con, events, kinds)
        if self._summarised_until is not None:
            latest = pc.max(events.column("timestamp")).cast(pa.int64()).as_py()
            self._summarised_until = max(self._summarised_until, latest or 0)
        if self._summary_pending >= max(summaries.COMPACT_AT_LEAST, self._summary_rows // 4):
            self._summary_rows = summaries.compact(con)
            self._summary_pending = 0

    def summarise_properties(self, wanted: Iterable[tuple[str, str, str]]) -> list[tuple[str, str]]:
        """Summarise these (event key, property, JSON pointer) from now on, filling their
        summaries from the stored events; the (event key, property) pairs that were new."""
        with self._transaction() as con:
            added = summaries.summarise(con, wanted)
            self._summarised = None
            if added:
                self._summary_rows = summaries.compact(con)
                self._summary_pending = 0
        return added

    def summary_coverage(
        self, wanted: Iterable[tuple[str, str, str]], at_us: int
    ) -> SummaryCoverageSets:
        """What the summaries answer as of `at_us`, after summarising `wanted` (event key,
        property, JSON pointer) when new: the events and the (event, property) pairs with a
        summary row on both sides of the instant (to be read from the log), and every
        summarised (event, property)."""
        wanted = list(wanted)
        with self._lock:
            if self._summarised is None:
                self._summarised = summaries.summarised(self._con)
            if self._summarised_until is None:
                self._summarised_until = summaries.latest(self._con)
            known = self._summarised.issuperset((e, p) for e, p, _ in wanted)
            if known and at_us >= self._summarised_until:  # nothing after the instant
                return set(), set(), set(self._summarised)
        if not known:
            self.summarise_properties(wanted)
        at = pa.scalar(at_us, _TS).as_py()
        with self._lock:
            return summaries.coverage(self._con, at)

    def compact_summaries(self) -> int:
        """Fold the summaries to one row per profile and event (or property value), as ingest
        does once enough rows piled up; the rows left."""
        with self._transaction() as con:
            self._summary_rows = summaries.compact(con)
            self._summary_pending = 0
        return self._summary_rows

    def rebuild_summaries(self) -> int:
        """Recompute every summary from the event log (after events were written other than
        by ingest, such as a bulk copy in SQL); the rows written."""
        with self._transaction() as con:
            self._summary_rows = summaries.rebuild(con)
            self._summary_pending = 0
            self._summarised_until = None
        return self._summary_rows

    def _write_profiles(
        self,
        con: duckdb.DuckDBPyConnection,
        batch: ResolvedBatch,
        final: dict[str, str],
        now: datetime,
    ) -> None:
        created = sorted(batch.changes.new_profiles)
        if created:
            table = pa.table(
                {
                    "profile_id": created,
                    "created_at": pa.array([now] * len(created), _TS),
                    "merged_into": pa.nulls(len(created), pa.string()),
                }
            )
            # New by construction (named after an identifier nobody owned): a plain insert.
            con.from_arrow(table).insert_into("profiles")
        merges = batch.changes.merges
        if not merges:
            return
        table = pa.table(
            {
                "source": [m.source for m in merges],
                "target": [final.get(m.target, m.target) for m in merges],
                "merged_at": pa.array([m.at_us for m in merges], _TS),
                "message_id": [m.message_id for m in merges],
                "kind": [m.kind for m in merges],
                "direct_target": [m.target for m in merges],
            }
        )
        sources = {m.source for m in merges}
        cache = self._identities
        # Profiles merged into a source before follow it to the survivor; a profile nothing was
        # merged into needs only its own row changed (each of these statements scans a table).
        chained = cache is None or cache.absorbed_any(sources)
        statements = [
            "INSERT INTO merges "
            "SELECT merged_at, source, direct_target, message_id, kind FROM _batch",
            "UPDATE profiles SET merged_into = m.target FROM _batch m "
            "WHERE profiles.profile_id = m.source"
            + (" OR profiles.merged_into = m.source" if chained else ""),
            "UPDATE identities SET profile_id = m.target FROM _batch m "
            "WHERE identities.profile_id = m.source",
        ]
        if chained:
            statements.append(
                "UPDATE profile_aliases SET canonical_id = m.target FROM _batch m "
                "WHERE profile_aliases.canonical_id = m.source"
            )
        # A source is a live profile, so it has no alias row yet: a plain insert.
        statements.append("INSERT INTO profile_aliases SELECT source, target FROM _batch")
        if cache is None or cache.traits_of_any(sources):
            statements += [
                # The survivor takes the merged profiles' stored traits (latest wins).
                "INSERT INTO profile_traits "
                "SELECT m.target, t.name, t.value, t.updated_at FROM profile_traits t "
                "JOIN _batch m ON t.profile_id = m.source "
                "QUALIFY row_number() OVER (PARTITION BY m.target, t.name "
                "ORDER BY t.updated_at DESC) = 1 "
                "ON CONFLICT (profile_id, name) DO UPDATE SET "
                "value = excluded.value, updated_at = excluded.updated_at "
                "WHERE excluded.updated_at > profile_traits.updated_at",
                "DELETE FROM profile_traits WHERE profile_id IN (SELECT source FROM _batch)",
            ]
        _run_with(con, table, *statements)

    def _write_identities(
        self, con: duckdb.DuckDBPyConnection, batch: ResolvedBatch, final: dict[str, str]
    ) -> None:
        rows = batch.changes.new_identities
        if not rows:
            return
        table = pa.table(
            {
                "kind": [r[0] for r in rows],
                "value": [r[1] for r in rows],
                "profile_id": [final.get(r[2], r[2]) for r in rows],
                "first_seen": pa.array([r[3] for r in rows], _TS),
            }
        )
        # Only identifiers nobody owned reach here: a plain insert (ON CONFLICT costs ~3 ms).
        con.from_arrow(table).insert_into("identities")

    def _write_traits(
        self, con: duckdb.DuckDBPyConnection, batch: ResolvedBatch, final: dict[str, str]
    ) -> set[str]:
        dirty = sorted({final.get(p, p) for p in batch.changes.dirty_traits})
        names: list[str] = []
        owners: list[str] = []
        values: list[str] = []
        stamps: list[int] = []
        for profile_id in dirty:
            state = batch.profiles.get(profile_id)
            if state is None:
                continue
            for name, (value, updated) in state.traits.items():
                owners.append(profile_id)
                names.append(name)
                values.append(orjson.dumps(value, default=str).decode())
                stamps.append(updated)
        if not owners:
            return set()
        table = pa.table(
            {
                "profile_id": owners,
                "name": names,
                "value": values,
                "updated_at": pa.array(stamps, _TS),
            }
        )
        _run_with(
            con,
            table,
            "INSERT INTO profile_traits SELECT * FROM _batch "
            "ON CONFLICT (profile_id, name) DO UPDATE SET "
            "value = excluded.value, updated_at = excluded.updated_at "
            "WHERE excluded.updated_at >= profile_traits.updated_at",
        )
        return set(owners)

    def _write_quarantine(
        self, con: duckdb.DuckDBPyConnection, rejections: Sequence[Rejection], now: datetime
    ) -> None:
        table = pa.table(
            {
                "quarantine_id": [_quarantine_id(r) for r in rejections],
                "quarantined_at": pa.array([now] * len(rejections), _TS),
                "source": [r.source for r in rejections],
                "origin": [r.origin for r in rejections],
                "reason": [r.reason for r in rejections],
                "detail": [r.detail for r in rejections],
                "message_id": [r.message_id for r in rejections],
                "payload": [r.payload for r in rejections],
            }
        )
        _run_with(con, table, "INSERT INTO quarantine SELECT * FROM _batch ON CONFLICT DO NOTHING")

    def find_profile(self, kind: str, value: str) -> str | None:
        if kind == "profile_id":
            rows = self.query(
                "SELECT coalesce(a.canonical_id, p.profile_id) FROM profiles p "
                "LEFT JOIN profile_aliases a USING (profile_id) WHERE p.profile_id = ?",
                [value],
            )
        else:
            rows = self.query(
                "SELECT profile_id FROM identities WHERE kind = ? AND value = ?", [kind, value]
            )
        return str(rows[0][0]) if rows else None

    def profile(self, profile_id: str, recent: int = 10) -> ProfileView | None:
        live = self.query(
            "SELECT 1 FROM profiles WHERE profile_id = ? AND merged_into IS NULL", [profile_id]
        )
        if not live:
            return None
        head = self.query(
            'SELECT min("timestamp"), max("timestamp") FROM profile_events '
            "WHERE canonical_profile_id = ?",
            [profile_id],
        )
        identifiers = [
            {"kind": k, "value": v, "first_seen": f}
            for k, v, f in self.query(
                "SELECT kind, value, first_seen FROM identities WHERE profile_id = ? "
                "ORDER BY kind, first_seen, value",
                [profile_id],
            )
        ]
        traits = {
            name: orjson.loads(value) if value is not None else None
            for name, value in self.query(
                "SELECT name, value FROM profile_traits WHERE profile_id = ? ORDER BY name",
                [profile_id],
            )
        }
        merges = [
            {
                "merged_at": at,
                "from_profile": src,
                "into_profile": dst,
                "via": kind,
                "message_id": mid,
            }
            for at, src, dst, kind, mid in self.query(
                "SELECT merged_at, from_profile, into_profile, identifier_kind, message_id "
                "FROM merges WHERE into_profile = ? OR into_profile IN "
                "(SELECT profile_id FROM profile_aliases WHERE canonical_id = ?) "
                "ORDER BY merged_at",
                [profile_id, profile_id],
            )
        ]
        events = [
            {"timestamp": ts, "type": typ, "event": ev or name, "message_id": mid}
            for ts, typ, ev, name, mid in self.query(
                'SELECT "timestamp", type, event, name, message_id FROM profile_events '
                'WHERE canonical_profile_id = ? ORDER BY "timestamp" DESC LIMIT ?',
                [profile_id, recent],
            )
        ]
        return ProfileView(profile_id, head[0][0], head[0][1], identifiers, traits, merges, events)

    def stats(self) -> dict[str, dict[str, int]]:
        return count_stats(self.query)

    def profile_ids(self, sql: str) -> list[str]:
        with self._lock:
            table = self._con.sql(sql).to_arrow_table()
        return [] if table is None else [str(v) for v in table.column(0).to_pylist()]

    def query_arrow(self, sql: str) -> pa.Table:
        with self._lock:
            return query_arrow(self._con, sql)

    def flagged_members(self, sql: str, columns: Mapping[str, str]) -> dict[str, list[str]]:
        """Every segment's sorted members from one query of per-profile flags."""
        with self._lock:
            return flagged_members(self._con, sql, columns)

    def last_compute_as_of(self) -> int | None:
        rows = self.query("SELECT epoch_us(max(as_of)) FROM compute_runs")
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def membership(self, kind: str, name: str, at_us: int | None = None) -> list[tuple[str, bool]]:
        if at_us is None:
            rows = self.query(
                "SELECT profile_id, holdout FROM memberships "
                "WHERE kind = ? AND name = ? AND exited_at IS NULL ORDER BY profile_id",
                [kind, name],
            )
        else:
            at = pa.scalar(at_us, _TS).as_py()
            rows = self.query(
                "SELECT profile_id, holdout FROM memberships WHERE kind = ? AND name = ? "
                "AND entered_at <= ? AND (exited_at IS NULL OR exited_at > ?) "
                "ORDER BY profile_id",
                [kind, name, at, at],
            )
        return [(str(p), bool(h)) for p, h in rows]

    def identifiers(
        self, profile_ids: Sequence[str], kinds: Sequence[str]
    ) -> dict[str, dict[str, str]]:
        ids = pa.table({"profile_id": pa.array(list(profile_ids), pa.string())})
        kinds_list = list(kinds)
        with self._lock:
            self._con.register("_ids", ids)
            try:
                rows = self._con.execute(
                    "SELECT i.profile_id, x.kind, arg_min(x.value, (x.first_seen, x.value)) "
                    "FROM _ids i LEFT JOIN profile_aliases a ON a.profile_id = i.profile_id "
                    "JOIN identities x ON x.profile_id = coalesce(a.canonical_id, i.profile_id) "
                    "WHERE list_contains(?, x.kind) GROUP BY ALL",
                    [kinds_list],
                ).fetchall()
            finally:
                self._con.unregister("_ids")
        found: dict[str, dict[str, str]] = {}
        for profile_id, kind, value in rows:
            found.setdefault(str(profile_id), {})[str(kind)] = str(value)
        return found

    def close(self) -> None:
        with self._lock:
            self._con.close()


def _query_with(con: duckdb.DuckDBPyConnection, table: pa.Table, sql: str) -> list[Any]:
    """The rows of a query that reads the Arrow `table` as `_batch`."""
    con.register("_batch", table)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.unregister("_batch")


def _run_with(con: duckdb.DuckDBPyConnection, table: pa.Table, *statements: str) -> None:
    """Run statements that read the Arrow `table` as `_batch`."""
    con.register("_batch", table)
    try:
        for sql in statements:
            con.execute(sql)
    finally:
        con.unregister("_batch")


def _quarantine_id(rejection: Rejection) -> str:
    """The same bad row from the same place is quarantined once, however often it is re-sent."""
    key = "\x1f".join((rejection.source or "", rejection.origin, rejection.payload))
    return hashlib.sha256(key.encode()).hexdigest()[:32]
