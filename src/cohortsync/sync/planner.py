"""Planning, written once for both stores: the outbox rows that bring every route to what its
audience holds now, and the conversions events call for.

A plan compares each route's desired members (the audience, holdout left out unless the route
takes it) with its base: the change in flight for a profile if any, else what the destination
acknowledged. Waiting rows that no longer match what is needed are dropped (an enter then exit
before delivery coalesces to nothing); needed changes without a waiting row are queued, removes
first, so a merged profile's old identifiers leave before its survivor's are added. Identifiers
are fixed when a change is planned; a remove reuses what the add sent.

Each step is one SELECT written once. Postgres runs them as one statement (every part reads
one snapshot, which concurrent workers need); DuckDB, which has no writing CTEs, keeps each
step's rows as an Arrow table and runs the writes after — one process writes a DuckDB file, so
its steps see what the one statement would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cohortsync.store.outbox import (
    DRY_REMOVED,
    DRY_RUN,
    ConversionRoute,
    PlanCounts,
    Route,
    key_match,
    whole_log_due,
)
from cohortsync.store.sql import SqlStore, Tx

PLAN_MEMORY = "64MB"
"""Postgres work_mem of a whole-project plan (its sorts stay in memory up to ~1M changes)."""

PLAN_ALL = "plan:*"
"""The lock a whole-project plan holds exclusively and a per-profile plan shares."""

ANALYZE_AFTER = 5_000
"""A Postgres plan queuing this many changes refreshes the outbox's statistics before it
commits, so the next plan (maybe seconds later) is not planned for an empty table."""

_STEPS: tuple[tuple[str, str], ...] = (
    (
        "desired",
        """SELECT routes.destination, m.name AS audience, m.profile_id, m.holdout,
               m.entered_at AS changed_at
        FROM memberships m JOIN {routes} ON routes.audience = m.name
        WHERE m.kind = 'audience' AND m.exited_at IS NULL
          AND (routes.include_holdout OR NOT m.holdout){scope_m}""",
    ),
    (
        "flight",
        """SELECT o.destination, o.audience, o.profile_id, o.change_id, o.op, o.holdout
        FROM outbox o
        WHERE o.batch_id IS NOT NULL
          AND EXISTS (SELECT 1 FROM {routes}
                      WHERE routes.destination = o.destination
                        AND routes.audience = o.audience){scope_o}""",
    ),
    (
        "acked",
        f"""SELECT s.destination, s.audience, s.profile_id, s.holdout, s.status
        FROM destination_state s
        JOIN {{routes}} ON routes.destination = s.destination AND routes.audience = s.audience
        WHERE s.status <> CASE WHEN routes.dry_run THEN '{DRY_REMOVED}' ELSE '{DRY_RUN}' END
          {{scope_s}}""",
    ),
    (
        "base",
        f"""SELECT coalesce(f.destination, s.destination) AS destination,
               coalesce(f.audience, s.audience) AS audience,
               coalesce(f.profile_id, s.profile_id) AS profile_id,
               CASE WHEN f.change_id IS NOT NULL THEN f.op = 'add' ELSE true END AS present,
               coalesce(f.holdout, s.holdout) AS holdout,
               f.change_id IS NULL AND s.status = 'rejected' AS rejected
        FROM {{flight}} f FULL JOIN {{acked}} s ON {key_match("f", "s")}""",
    ),
    (
        "needed",
        f"""SELECT * FROM (
            SELECT d.destination, d.audience, d.profile_id, 'add' AS op, d.holdout, d.changed_at
            FROM {{desired}} d LEFT JOIN {{base}} b ON {key_match("d", "b")}
            WHERE b.profile_id IS NULL OR NOT b.present
               OR (b.holdout <> d.holdout AND NOT b.rejected)
            UNION ALL
            SELECT b.destination, b.audience, b.profile_id, 'remove', b.holdout,
                   $now::timestamptz
            FROM {{base}} b
            WHERE b.present AND NOT b.rejected
              AND NOT EXISTS (SELECT 1 FROM {{desired}} d WHERE {key_match("d", "b")})
        ) n
        WHERE NOT EXISTS (
            SELECT 1 FROM dead_letters x
            WHERE x.kind = 'changes' AND x.retried_at IS NULL AND x.op = n.op
              AND {key_match("x", "n")})""",
    ),
    (
        "fresh",
        f"""SELECT n.* FROM {{needed}} n
        WHERE NOT EXISTS (SELECT 1 FROM outbox w
                          WHERE w.batch_id IS NULL AND {key_match("w", "n")}
                            AND w.op = n.op AND w.holdout = n.holdout)""",
    ),
    (  # per kind, the identifier first seen (ties: the smallest value), read through merges
        "planned_ids",
        """SELECT f.profile_id, {json_object_agg}(f.kind, f.value){json_text} AS identifiers
        FROM (
            SELECT DISTINCT ON (p.profile_id, x.kind) p.profile_id, x.kind, x.value
            FROM (SELECT DISTINCT profile_id FROM {fresh}) p
            LEFT JOIN profile_aliases a ON a.profile_id = p.profile_id
            JOIN identities x ON x.profile_id = coalesce(a.canonical_id, p.profile_id)
            ORDER BY p.profile_id, x.kind, x.first_seen, x.value
        ) f
        GROUP BY f.profile_id""",
    ),
)

_ROUTED = "EXISTS (SELECT 1 FROM {routes} WHERE routes.destination = {t}.destination AND routes.audience = {t}.audience)"  # noqa: E501

_WRITES: tuple[tuple[str, str], ...] = (
    (
        "forget_rejected",
        f"""DELETE FROM destination_state
        WHERE status = 'rejected' AND {_ROUTED.replace("{t}", "destination_state")}
          AND NOT EXISTS (SELECT 1 FROM {{desired}} d WHERE {key_match("d", "destination_state")})
          AND NOT EXISTS (SELECT 1 FROM outbox o WHERE {key_match("o", "destination_state")})
          {{scope_state}}""",
    ),
    (
        "forget_dry_run",
        f"""DELETE FROM destination_state
        WHERE status = '{DRY_RUN}'
          AND EXISTS (SELECT 1 FROM {{routes}} WHERE NOT routes.dry_run
                      AND routes.destination = destination_state.destination
                      AND routes.audience = destination_state.audience){{scope_state}}""",
    ),
    (
        "stale",
        f"""DELETE FROM outbox
        WHERE batch_id IS NULL AND {_ROUTED.replace("{t}", "outbox")}
          AND NOT EXISTS (SELECT 1 FROM {{needed}} n
                          WHERE {key_match("n", "outbox")} AND n.op = outbox.op
                            AND n.holdout = outbox.holdout){{scope_outbox}}""",
    ),
)

_ORDER = "n.op DESC, n.destination, n.audience, n.profile_id"

_QUEUE = f"""INSERT INTO outbox (change_id, destination, audience, profile_id, op, holdout,
        changed_at, planned_at, batch_id, identifiers)
    SELECT {{change_id}}, n.destination, n.audience, n.profile_id, n.op, n.holdout,
           n.changed_at, $now::timestamptz, NULL,
           CASE WHEN n.op = 'remove' THEN coalesce(s.identifiers, i.identifiers::{{json}})
                ELSE i.identifiers::{{json}} END
    FROM {{fresh}} n
    LEFT JOIN {{planned_ids}} i ON i.profile_id = n.profile_id
    LEFT JOIN destination_state s ON {key_match("s", "n")}
    ORDER BY {_ORDER}"""

# Lock the waiting rows a plan may delete or keep: a claim (SKIP LOCKED) leaves them alone, and
# a claim already under way finishes first (the row then is in flight when the plan reads).
_LOCK_WAITING = """SELECT o.change_id FROM outbox o
    WHERE o.batch_id IS NULL
      AND EXISTS (SELECT 1 FROM {routes}
                  WHERE routes.destination = o.destination AND routes.audience = o.audience)
      {scope_o}
    ORDER BY o.change_id{for_update}"""


def _scopes(planned: str | None) -> dict[str, str]:
    """SQL conditions limiting each alias to the planned profiles (none: every profile);
    `planned` completes `profile_id …` (`Tx.among`)."""
    aliases = ("m", "o", "s", "state", "outbox")
    if planned is None:
        return {f"scope_{a}": "" for a in aliases}
    table = {"state": "destination_state", "outbox": "outbox"}
    return {f"scope_{a}": f" AND {table.get(a, a)}.profile_id {planned}" for a in aliases}


def plan_changes(
    tx: Tx, routes: Sequence[Route], now: datetime, profiles: Sequence[str] | None = None
) -> PlanCounts:
    """Queue what brings each route to its desired state, inside the caller's transaction.

    With `profiles`, only those profiles are planned (the real-time path).
    """
    if not routes or (profiles is not None and not profiles):
        return PlanCounts()
    if profiles is None:  # a whole plan excludes every other plan
        tx.lock(PLAN_ALL)
    else:  # per-profile plans exclude each other per profile
        tx.lock(PLAN_ALL, shared=True)
        tx.lock(*("plan:" + p for p in profiles))
    planned = None if profiles is None else tx.among("planned", list(dict.fromkeys(profiles)))
    fill = {"routes": route_rows(tx, routes), **_scopes(planned)}
    params = {"now": now}
    if tx.dialect == "postgres":
        tx.run(_LOCK_WAITING, params, **fill)
        with _set_based(tx, profiles is None):
            adds, removes = _plan_in_one_statement(tx, params, fill)
        if adds + removes >= ANALYZE_AFTER:
            tx.run("ANALYZE outbox")
    else:
        adds, removes = _plan_in_steps(tx, params, fill, scoped=profiles is not None)
    return PlanCounts(adds=adds, removes=removes)


def route_rows(tx: Tx, routes: Sequence[Route]) -> str:
    """The routes as the relation `routes` (destination, audience, include_holdout, dry_run)."""
    return tx.rows(
        "routes",
        [
            ("destination", "text"),
            ("audience", "text"),
            ("include_holdout", "boolean"),
            ("dry_run", "boolean"),
        ],
        [
            [r.destination for r in routes],
            [r.audience for r in routes],
            [r.include_holdout for r in routes],
            [r.dry_run for r in routes],
        ],
    )


def _plan_in_one_statement(tx: Tx, params: dict[str, Any], fill: dict[str, str]) -> tuple[int, int]:
    names = {name: name for name, _ in _STEPS}
    parts = [f"{name} AS ({sql})" for name, sql in _STEPS[:5]]
    parts += [f"{name} AS ({sql} RETURNING 1)" for name, sql in _WRITES]
    parts += [f"{name} AS ({sql})" for name, sql in _STEPS[5:]]
    parts.append(f"queued AS ({_QUEUE} RETURNING op)")
    statement = (
        "WITH "
        + ",\n".join(parts)
        + "\nSELECT count(*) FILTER (WHERE op = 'add'), count(*) FILTER (WHERE op = 'remove') "
        "FROM queued"
    )
    row = tx.run(statement, params, change_id=tx.number("change_id", _ORDER), **names, **fill)[0]
    return int(row[0]), int(row[1])


_GUARDS = f"""SELECT
    (SELECT count(*) FROM {{fresh}} WHERE op = 'add'),
    (SELECT count(*) FROM {{fresh}} WHERE op = 'remove'),
    EXISTS (SELECT 1 FROM destination_state WHERE status = 'rejected'{{scope_state}}),
    EXISTS (SELECT 1 FROM destination_state WHERE status = '{DRY_RUN}'{{scope_state}}),
    EXISTS (SELECT 1 FROM outbox WHERE batch_id IS NULL{{scope_outbox}})"""
"""What the steps found, and which writes have anything to change (a DuckDB write costs
milliseconds even when it changes nothing; a read of the same rows, a fraction)."""


class _Kept(dict[str, str]):
    """Fill values for `str.format_map` that leave unknown names as they are."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _plan_in_steps(
    tx: Tx, params: dict[str, Any], fill: dict[str, str], scoped: bool
) -> tuple[int, int]:
    """The steps one after the other. A plan of a few profiles runs the first four steps as
    common table expressions of the fifth rather than keeping each (fewer statements, each
    costing more than its few rows); a whole plan keeps each step once."""
    kept = _Kept(fill)
    if scoped:
        named = _Kept(fill, **{name: name for name, _ in _STEPS[:4]})
        ctes = ", ".join(f"{name} AS ({sql.format_map(named)})" for name, sql in _STEPS[:4])
        name, sql = _STEPS[4]
        kept[name] = tx.keep(f"_{name}", f"WITH {ctes} {sql}", params, **named)
        kept["desired"] = f"({_STEPS[0][1].format_map(kept)})"  # for a rejection to forget
    else:
        for name, sql in _STEPS[:5]:
            kept[name] = tx.keep(f"_{name}", sql, params, **kept)
    name, sql = _STEPS[5]
    kept[name] = tx.keep(f"_{name}", sql, params, **kept)
    row = tx.run(_GUARDS, None, **kept)[0]
    adds, removes = int(row[0]), int(row[1])
    rejected, dry_run, waiting = bool(row[2]), bool(row[3]), bool(row[4])
    for (_, sql), needed in zip(_WRITES, (rejected, dry_run, waiting), strict=True):
        if needed:
            tx.run(sql, params, **kept)
    if adds + removes:
        name, sql = _STEPS[6]
        kept[name] = tx.keep(f"_{name}", sql, params, **kept)
        tx.run(_QUEUE, params, change_id=tx.number("change_id", _ORDER), **kept)
        tx.numbered("change_id", adds + removes)
    return adds, removes


@contextmanager
def _set_based(tx: Tx, wanted: bool) -> Iterator[None]:
    """A whole-project plan on Postgres joins every member with every acknowledged row: hash
    joins in memory, never nested loops (statistics taken before a large plan or delivery would
    make the planner expect a few rows and loop over hundreds of thousands). Restored after."""
    if not wanted:
        yield
        return
    row = tx.run(
        "SELECT current_setting('work_mem'), current_setting('enable_nestloop'), "
        "set_config('work_mem', $memory, true), set_config('enable_nestloop', 'off', true)",
        {"memory": PLAN_MEMORY},
    )[0]
    yield
    tx.run(
        "SELECT set_config('work_mem', $memory, true), set_config('enable_nestloop', $loop, true)",
        {"memory": row[0], "loop": row[1]},
    )


# -- conversions ----------------------------------------------------------------------------

_NUMBER = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?\s*$"
"""A value property that reads as a number (anything else is no value)."""

_VALUE = {
    "duckdb": "TRY_CAST(json_extract_string(e.properties, '$.' || rules.value_property) AS DOUBLE)",
    "postgres": "CASE WHEN (e.properties #>> string_to_array(rules.value_property, '.')) ~ "
    "$number THEN (e.properties #>> string_to_array(rules.value_property, '.'))"
    "::double precision END",
}
_CURRENCY = {
    "duckdb": "json_extract_string(e.properties, '$.currency')",
    "postgres": "e.properties ->> 'currency'",
}

_QUEUE_CONVERSIONS = """
INSERT INTO conversion_outbox (conversion_id, destination, message_id, name, event,
    "timestamp", profile_id, value, currency, properties, context, planned_at, batch_id,
    identifiers)
SELECT {conversion_id}, m.destination, m.message_id, m.name, m.event, m."timestamp",
       m.profile_id, m.value, upper(m.currency), m.properties, m.context, $now::timestamptz,
       NULL, NULL
FROM (
    SELECT rules.destination, e.message_id, rules.name, e.event, e."timestamp",
           coalesce(a.canonical_id, e.profile_id) AS profile_id, {value} AS value,
           coalesce({currency}, rules.currency) AS currency, e.properties, e.context
    FROM events e JOIN {rules} ON e.type = 'track' AND e.event_key = rules.event
    LEFT JOIN profile_aliases a ON a.profile_id = e.profile_id
    WHERE NOT EXISTS (SELECT 1 FROM conversion_ledger l
                      WHERE l.destination = rules.destination AND l.message_id = e.message_id)
      {since}
) m
ORDER BY {order}
RETURNING destination, message_id, conversion_id
"""

_CONVERSIONS_LOCK = "conversions:"
_CONVERSION_ORDER = 'm."timestamp", m.destination, m.message_id'


@dataclass(frozen=True)
class _Reached:
    """How far this process planned a set of routes on DuckDB: every event up to `rowid`."""

    routes: tuple[ConversionRoute, ...]
    rowid: int


class ConversionCursor:
    """Where conversion planning has reached in the event log, so a planning reads only the
    events stored since — the one thing the engines keep differently.

    Postgres: each event records the transaction that wrote it, and each (destination, event)
    the snapshot xmin its last planning saw (`conversion_cursors`), shared by every process.
    DuckDB: `events` is append-only and written by this process alone, so its row numbers grow
    in commit order; the cursor lives in this process. Either way the whole log is read on the
    first planning in a process, after a retry of dead conversions, and every ten minutes
    (`whole_log_due`); the ledger's primary key refuses a second conversion of an event.
    """

    def __init__(self) -> None:
        self._full_at: datetime | None = None
        self._reached: _Reached | None = None
        self._forgotten = 0  # how many times `forget` ran: a planning across one keeps nothing
        self._lock = threading.Lock()

    def plan(self, sql: SqlStore, routes: Sequence[ConversionRoute], now: datetime) -> PlanCounts:
        if not routes:
            return PlanCounts()
        with self._lock:
            return self._plan(sql, routes, now)

    def _plan(self, sql: SqlStore, routes: Sequence[ConversionRoute], now: datetime) -> PlanCounts:
        forgotten = self._forgotten
        with sql.transaction() as tx:
            # Two processes planning at once: the second waits, then sees the first's ledger.
            tx.lock(*(_CONVERSIONS_LOCK + r.destination for r in routes))
            full = whole_log_due(self._full_at, now)
            since, params, reached = self._since(tx, tuple(routes), full)
            # A cursor taken before reading: events committed meanwhile are read again next
            # time, never skipped (the ledger refuses them twice).
            below = (
                tx.run("SELECT pg_snapshot_xmin(pg_current_snapshot())")[0][0]
                if (tx.dialect == "postgres")
                else None
            )
            rules = tx.rows(
                "rules",
                [
                    ("destination", "text"),
                    ("event", "text"),
                    ("name", "text"),
                    ("value_property", "text"),
                    ("currency", "text"),
                ],
                [
                    [r.destination for r in routes],
                    [r.event for r in routes],
                    [r.name for r in routes],
                    [r.value_property for r in routes],
                    [r.currency for r in routes],
                ],
            )
            queued = tx.run(
                _QUEUE_CONVERSIONS,
                {**params, "now": now, "number": _NUMBER},
                rules=rules,
                since=since,
                value=_VALUE[tx.dialect],
                order=_CONVERSION_ORDER,
                currency=_CURRENCY[tx.dialect],
                conversion_id=tx.number(
                    "conversion_id", 'm."timestamp", m.destination, m.message_id'
                ),
            )
            tx.numbered("conversion_id", len(queued))
            if queued:
                ledger = tx.rows(
                    "ledger",
                    [("destination", "text"), ("message_id", "text"), ("conversion_id", "bigint")],
                    [[q[0] for q in queued], [q[1] for q in queued], [int(q[2]) for q in queued]],
                )
                tx.run(
                    "INSERT INTO conversion_ledger (destination, message_id, conversion_id) "
                    "SELECT destination, message_id, conversion_id FROM {ledger}",
                    ledger=ledger,
                )
            if tx.dialect == "postgres":
                tx.run(
                    "INSERT INTO conversion_cursors (destination, event, planned_below) "
                    "SELECT DISTINCT destination, event, $below::xid8 "
                    "FROM {rules} ON CONFLICT (destination, event) "
                    "DO UPDATE SET planned_below = excluded.planned_below",
                    {"below": below},
                    rules=rules,
                )
        if self._forgotten == forgotten:  # only once the plan has committed, and still true
            self._reached = reached
            if full or self._full_at is None:
                self._full_at = now
        return PlanCounts(conversions=len(queued))

    def _since(
        self, tx: Tx, routes: tuple[ConversionRoute, ...], full: bool
    ) -> tuple[str, dict[str, Any], _Reached | None]:
        """The condition on `e` reading only events not planned yet, its parameters, and
        where this planning reaches (DuckDB)."""
        if tx.dialect == "postgres":
            lowest, all_planned = tx.run(
                "SELECT min(c.planned_below), bool_and(c.planned_below IS NOT NULL) "
                "FROM {pairs} LEFT JOIN conversion_cursors c "
                "ON c.destination = pairs.destination AND c.event = pairs.event",
                pairs=tx.rows(
                    "pairs",
                    [("destination", "text"), ("event", "text")],
                    [[r.destination for r in routes], [r.event for r in routes]],
                ),
            )[0]
            if full or not all_planned:
                return "", {}, None
            return "AND e.written_by >= $written_from::xid8", {"written_from": lowest}, None
        top = tx.run("SELECT max(rowid) FROM events")[0][0]
        reached = _Reached(routes, -1 if top is None else int(top))
        known = self._reached
        if full or known is None or known.routes != routes:
            return "", {}, reached
        return "AND e.rowid > $after", {"after": known.rowid}, reached

    def forget(self, tx: Tx, destinations: Sequence[str]) -> None:
        """Read every event at the next planning of these destinations (their dead conversions
        are queued again). Under the planners' locks: a planning in flight must not restore a
        cursor."""
        self._forgotten += 1
        self._reached = None
        self._full_at = None
        if tx.dialect == "postgres" and destinations:
            tx.lock(*(_CONVERSIONS_LOCK + d for d in destinations))
            tx.run(
                "DELETE FROM conversion_cursors WHERE destination IN "
                "(SELECT destination FROM {gone})",
                gone=tx.rows("gone", [("destination", "text")], [list(destinations)]),
            )
