"""The real-time store on DuckDB: histories of a few profiles, their diff, timers, cursor."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import duckdb
import orjson
import pyarrow as pa

from cohortsync.moments import to_datetime
from cohortsync.store.base import MembershipChanges
from cohortsync.store.duckdb_memberships import diff_memberships
from cohortsync.store.duckdb_outbox import plan_changes
from cohortsync.store.duckdb_shared import ConnectionView, Registered
from cohortsync.store.outbox import Route
from cohortsync.store.realtime import HistoryRows, ProfileOutcome, RealtimeStore

_TS = pa.timestamp("us", tz="UTC")
REALTIME_RUN = 0


def _ids(values: Iterable[str]) -> pa.Table:
    return pa.table({"profile_id": pa.array(list(values), pa.string())})


def _move_cursor(con: duckdb.DuckDBPyConnection, received_at_us: int) -> None:
    """Move the evaluation cursor forward (never back)."""
    con.execute(
        "INSERT OR REPLACE INTO realtime_state VALUES ('cursor', greatest(?, "
        "coalesce((SELECT value FROM realtime_state WHERE name = 'cursor'), 0)))",
        [received_at_us],
    )


class DuckDBRealtime(ConnectionView, RealtimeStore):
    """`RealtimeStore` over the store's connection, sharing its lock and transactions."""

    def canonical(self, profile_ids: Iterable[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(profile_ids))
        with self._lock, Registered(self._con, _p=_ids(ids)) as con:
            rows = con.execute(
                "SELECT p.profile_id, coalesce(a.canonical_id, p.profile_id) FROM _p p "
                "LEFT JOIN profile_aliases a ON a.profile_id = p.profile_id"
            ).fetchall()
        return {str(p): str(c) for p, c in rows}

    def owners(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        wanted = list(dict.fromkeys(keys))
        table = pa.table(
            {
                "kind": pa.array([k for k, _ in wanted], pa.string()),
                "value": pa.array([v for _, v in wanted], pa.string()),
            }
        )
        with self._lock, Registered(self._con, _keys=table) as con:
            rows = con.execute(
                "SELECT k.kind, k.value, coalesce(a.canonical_id, x.profile_id) FROM _keys k "
                "JOIN identities x ON x.kind = k.kind AND x.value = k.value "
                "LEFT JOIN profile_aliases a ON a.profile_id = x.profile_id"
            ).fetchall()
        return {(str(k), str(v)): str(p) for k, v, p in rows}

    def histories(self, profile_ids: Sequence[str], events: Iterable[str]) -> list[HistoryRows]:
        wanted = sorted(set(events))
        with self._lock, Registered(self._con, _p=_ids(profile_ids)) as con:
            # Every id that folds into a wanted profile (itself and the ids merged into it).
            con.execute(
                "CREATE OR REPLACE TEMP TABLE _members AS "
                "SELECT profile_id, profile_id AS owner FROM _p UNION ALL "
                "SELECT a.profile_id, a.canonical_id FROM profile_aliases a "
                "SEMI JOIN _p ON _p.profile_id = a.canonical_id"
            )
            event_rows = con.execute(
                'SELECT m.owner, e.message_id, e.event_key, epoch_us(e."timestamp"), '
                "e.properties FROM events e JOIN _members m ON m.profile_id = e.profile_id "
                "WHERE e.event_key IN (SELECT unnest(?::VARCHAR[]))",
                [wanted],
            ).fetchall()
            trait_rows = con.execute(
                "SELECT t.profile_id, t.name, t.value FROM profile_traits t "
                "SEMI JOIN _p ON _p.profile_id = t.profile_id"
            ).fetchall()
            identity_rows = con.execute(
                "SELECT x.profile_id, x.kind, x.value FROM identities x "
                "SEMI JOIN _p ON _p.profile_id = x.profile_id"
            ).fetchall()
            con.execute("DROP TABLE _members")
        found = {p: HistoryRows(p) for p in profile_ids}
        for owner, message_id, key, ts, props in event_rows:
            found[str(owner)].events.append(
                (str(message_id), str(key), int(ts), orjson.loads(props) if props else {})
            )
        for profile_id, name, value in trait_rows:
            found[str(profile_id)].traits[str(name)] = (
                None if value is None else orjson.loads(value)
            )
        for profile_id, kind, value in identity_rows:
            found[str(profile_id)].identifiers.setdefault(str(kind), []).append(str(value))
        return list(found.values())

    def record_profiles(
        self,
        outcomes: Sequence[ProfileOutcome],
        scope: Sequence[tuple[str, str]],
        at_us: int,
        routes: Sequence[Route],
        cursor_us: int | None = None,
    ) -> MembershipChanges:
        at = to_datetime(at_us)
        desired = [
            (kind, name, o.profile_id, holdout)
            for o in outcomes
            for (kind, name), holdout in o.members.items()
        ]
        computed = pa.table(
            {
                "kind": pa.array([d[0] for d in desired], pa.string()),
                "name": pa.array([d[1] for d in desired], pa.string()),
                "profile_id": pa.array([d[2] for d in desired], pa.string()),
                "holdout": pa.array([d[3] for d in desired], pa.bool_()),
            }
        )
        names = pa.table(
            {
                "kind": pa.array([k for k, _ in scope], pa.string()),
                "name": pa.array([n for _, n in scope], pa.string()),
            }
        )
        timers = [(o.profile_id, s, to_datetime(t)) for o in outcomes for s, t in o.timers.items()]
        timer_table = pa.table(
            {
                "profile_id": pa.array([t[0] for t in timers], pa.string()),
                "segment": pa.array([t[1] for t in timers], pa.string()),
                "due_at": pa.array([t[2] for t in timers], _TS),
            }
        )
        evaluated = _ids(o.profile_id for o in outcomes)
        with (
            self._transaction() as con,
            Registered(
                con, _computed=computed, _scope=names, _evaluated=evaluated, _timers=timer_table
            ),
        ):
            con.execute(
                "CREATE OR REPLACE TEMP TABLE _everyone AS "
                "SELECT profile_id FROM _evaluated UNION "
                "SELECT a.profile_id FROM profile_aliases a "
                "SEMI JOIN _evaluated e ON e.profile_id = a.canonical_id"
            )
            changes = diff_memberships(
                con,
                at,
                REALTIME_RUN,
                "profile_id IN (SELECT profile_id FROM _everyone) "
                "AND (kind, name) IN (SELECT (kind, name) FROM _scope)",
            )
            everyone = [str(r[0]) for r in con.execute("SELECT * FROM _everyone").fetchall()]
            plan_changes(con, routes, datetime.now(UTC), profiles=everyone)
            con.execute("DELETE FROM timers WHERE profile_id IN (SELECT * FROM _everyone)")
            con.execute("INSERT INTO timers SELECT * FROM _timers")
            con.execute("DROP TABLE _everyone")
            if cursor_us is not None:
                _move_cursor(con, cursor_us)
        return changes

    def due_timers(self, now_us: int, limit: int = 10_000) -> list[tuple[str, int]]:
        with self._lock:
            rows = self._con.execute(
                "SELECT profile_id, epoch_us(min(due_at)) AS due FROM timers WHERE due_at <= ? "
                "GROUP BY profile_id ORDER BY due, profile_id LIMIT ?",
                [to_datetime(now_us), limit],
            ).fetchall()
        return [(str(p), int(d)) for p, d in rows]

    def next_timer(self) -> int | None:
        with self._lock:
            rows = self._con.execute("SELECT epoch_us(min(due_at)) FROM timers").fetchall()
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def cursor(self) -> int | None:
        with self._lock:
            rows = self._con.execute(
                "SELECT value FROM realtime_state WHERE name = 'cursor'"
            ).fetchall()
        return int(rows[0][0]) if rows else None

    def set_cursor(self, received_at_us: int) -> None:
        with self._transaction() as con:
            _move_cursor(con, received_at_us)

    def audience_runs(self) -> dict[str, int]:
        with self._lock:
            rows = self._con.execute(
                "SELECT audience, epoch_us(last_run_at) FROM audience_runs"
            ).fetchall()
        return {str(a): int(t) for a, t in rows}

    def record_audience_runs(self, audiences: Sequence[str], at_us: int, run_id: int) -> None:
        table = pa.table(
            {
                "audience": pa.array(list(audiences), pa.string()),
                "last_run_at": pa.array([to_datetime(at_us)] * len(audiences), _TS),
                "run_id": pa.array([run_id] * len(audiences), pa.int64()),
            }
        )
        with self._transaction() as con, Registered(con, _runs=table):
            con.execute("INSERT OR REPLACE INTO audience_runs SELECT * FROM _runs")

    def profiles_received_since(self, received_at_us: int, events: Iterable[str]) -> list[str]:
        with self._lock:
            rows = self._con.execute(
                "SELECT DISTINCT canonical_profile_id FROM profile_events "
                "WHERE received_at >= ? AND (type IN ('identify', 'alias') "
                "OR event_key IN (SELECT unnest(?::VARCHAR[])))",
                [to_datetime(received_at_us), sorted(set(events))],
            ).fetchall()
        return [str(r[0]) for r in rows]
