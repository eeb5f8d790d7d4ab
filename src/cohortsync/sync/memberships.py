"""Membership history, written once for both stores: the diff of who should be a member
against who is, for a whole compute and for the few profiles one real-time round evaluates.

One row per stay of one profile in one segment or audience; the current members are the rows
not exited. Each writing statement counts what it changed (`RETURNING`), so the counts are what
was written even when another Postgres worker recorded the same entry first. The outbox rows a
change needs are planned in the same transaction.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from cohortsync.moments import to_datetime
from cohortsync.store.base import HistoryAheadError, MembershipChanges
from cohortsync.store.outbox import Route
from cohortsync.store.realtime import ProfileOutcome
from cohortsync.store.sql import SqlStore, SqlType, Tx, transposed
from cohortsync.sync.planner import plan_changes

REALTIME_RUN = 0
"""The run id of entries recorded by real-time evaluation."""

COMPUTED: tuple[tuple[str, SqlType], ...] = (
    ("kind", "text"),
    ("name", "text"),
    ("profile_id", "text"),
    ("holdout", "boolean"),
)
"""Who should be a member: the relation `diff_memberships` reads (named `c`)."""
_NAMES: tuple[tuple[str, SqlType], ...] = (("kind", "text"), ("name", "text"))

_LAST_US = 253_402_300_799_000_000
"""9999-12-31T23:59:59Z: the latest instant either engine stores."""

_MATCH = "{m}.kind = c.kind AND {m}.name = c.name AND {m}.profile_id = c.profile_id"

_EXITS = f"""
UPDATE memberships SET exited_at = $at
WHERE exited_at IS NULL{{within}}
  AND NOT EXISTS (SELECT 1 FROM {{c}} WHERE {_MATCH.format(m="memberships")})
RETURNING kind, name"""

_HOLDOUTS = f"""
UPDATE memberships SET holdout = c.holdout FROM {{c}}
WHERE memberships.exited_at IS NULL AND {_MATCH.format(m="memberships")}
  AND memberships.holdout <> c.holdout"""

# A Postgres worker may have entered the same member since this diff began: the partial unique
# index (one current row per member) keeps one row, and only ours are counted.
_ENTERS = f"""
INSERT INTO memberships (kind, name, profile_id, entered_at, exited_at, holdout, run_id)
SELECT c.kind, c.name, c.profile_id, $at, NULL, c.holdout, $run FROM {{c}}
WHERE NOT EXISTS (SELECT 1 FROM memberships m WHERE m.exited_at IS NULL AND {_MATCH.format(m="m")})
{{conflict}}
RETURNING kind, name"""

_ENTERS_ONLY = frozenset({"enters"})

_CURRENT_CONFLICT = {
    "duckdb": "",
    "postgres": "ON CONFLICT (kind, name, profile_id) WHERE exited_at IS NULL DO NOTHING",
}


def at_most_last(at_us: int) -> datetime:
    """The instant `at_us` µs after the epoch (one past year 9999 is read as then)."""
    return to_datetime(min(at_us, _LAST_US))


def record_compute(
    sql: SqlStore,
    computed: pa.Table,
    at_us: int,
    started: float,
    routes: Sequence[Route] = (),
    scope: Sequence[tuple[str, str]] | None = None,
) -> MembershipChanges:
    """One compute in one transaction: the diff, the outbox rows it needs, a compute_runs row.

    `computed` holds (kind, name, profile_id, holdout) of every member; `scope` limits which
    names' current members may exit (None: every name). Two processes never record computes
    at once (each holds the compute lock), and history is never recorded out of order.
    """
    at = at_most_last(at_us)
    kinds = computed.select(["kind", "name"]).group_by(["kind", "name"]).aggregate([])
    with sql.transaction() as tx:
        tx.lock("cohortsync:compute")
        last = tx.run("SELECT epoch_us(max(as_of)) FROM compute_runs")
        if last and last[0][0] is not None and at_us < int(last[0][0]):
            raise HistoryAheadError
        c = tx.table("c", COMPUTED, computed)
        within = ""
        if scope is not None:
            names = tx.rows("s", _NAMES, transposed(scope, 2))
            within = (
                f" AND EXISTS (SELECT 1 FROM {names} WHERE s.kind = memberships.kind "
                "AND s.name = memberships.name)"
            )
        changes = diff_memberships(tx, c, at, tx.next_id("compute_run"), within)
        if routes:
            plan_changes(tx, routes, datetime.now(UTC))
        tx.run(_RUN, _run_row(changes, at, started, kinds.column("kind").to_pylist()))
    return changes


_RUN_COLUMNS = (
    "run_id",
    "run_at",
    "as_of",
    "duration_ms",
    "segments",
    "audiences",
    "entered",
    "exited",
)
_RUN = (
    f"INSERT INTO compute_runs ({', '.join(_RUN_COLUMNS)}) "
    f"VALUES ({', '.join('$' + c for c in _RUN_COLUMNS)})"
)


def _run_row(
    changes: MembershipChanges, at: datetime, started: float, kinds: Sequence[str]
) -> dict[str, Any]:
    """The `compute_runs` row of one recorded compute (`started`: a `time.perf_counter()`)."""
    values = (
        changes.run_id,
        datetime.now(UTC),
        at,
        (time.perf_counter() - started) * 1000,
        sum(1 for k in kinds if k == "segment"),
        sum(1 for k in kinds if k == "audience"),
        sum(changes.entered.values()),
        sum(changes.exited.values()),
    )
    return dict(zip(_RUN_COLUMNS, values, strict=True))


def diff_memberships(
    tx: Tx,
    c: str,
    at: datetime,
    run: int,
    within: str = "",
    params: dict[str, Any] | None = None,
    steps: frozenset[str] = frozenset({"exits", "holdouts", "enters"}),
) -> MembershipChanges:
    """Exit absent members, enter new ones, update holdout flags; count per (kind, name).

    `c` is the relation (named `c`) of who should be a member. `within` (SQL starting with
    AND, over `memberships`, its values in `params`) limits which current members may exit:
    the real-time path diffs a few profiles and names, a full compute diffs everything.
    `steps` leaves out those the caller knows change nothing.
    """
    values = {"at": at, "run": run, **(params or {})}
    fill = {"c": c, "within": within, "conflict": _CURRENT_CONFLICT[tx.dialect]}
    exited = tx.counted(_EXITS, values, **fill) if "exits" in steps else {}
    if "holdouts" in steps:
        tx.run(_HOLDOUTS, values, **fill)
    entered = tx.counted(_ENTERS, values, **fill) if "enters" in steps else {}
    return MembershipChanges(run, _names(entered), _names(exited))


def _names(counts: dict[tuple[Any, ...], int]) -> dict[tuple[str, str], int]:
    return {(str(k), str(n)): c for (k, n), c in counts.items()}


# -- real time ---------------------------------------------------------------------------------

MERGED = """SELECT a.profile_id, a.canonical_id FROM profile_aliases a
WHERE a.canonical_id {ids}"""

# The current memberships and timers of the recorded profiles, in one read.
_HELD = """SELECT 'member', m.kind, m.name, m.profile_id, m.holdout, NULL FROM memberships m
WHERE m.profile_id {everyone} AND m.exited_at IS NULL
UNION ALL
SELECT 'timer', t.segment, NULL, t.profile_id, t.leased_until IS NOT NULL, epoch_us(t.due_at)
FROM timers t WHERE t.profile_id {everyone}"""

MARKS = """SELECT p.profile_id, p.version FROM realtime_pending p WHERE p.profile_id {ids}"""

_CLEARMARKS = """DELETE FROM realtime_pending
WHERE EXISTS (SELECT 1 FROM {marks} WHERE marks.profile_id = realtime_pending.profile_id
              AND (marks.version IS NULL OR marks.version = realtime_pending.version))"""

_DROP_TIMERS = "DELETE FROM timers WHERE profile_id {everyone}"

_ADD_TIMERS = """INSERT INTO timers (profile_id, segment, due_at)
SELECT profile_id, segment, due_at FROM {fresh}"""

MOVE_CURSOR = """INSERT INTO realtime_state (name, value) VALUES ('cursor', $cursor)
ON CONFLICT (name) DO UPDATE SET value = greatest(realtime_state.value, excluded.value)"""

LOCK_PREFIX = "realtime:"
"""Lock name of one profile's recording: `realtime:<profile_id>`."""


def record_profiles(
    sql: SqlStore,
    outcomes: Sequence[ProfileOutcome],
    scope: Sequence[tuple[str, str]],
    at_us: int,
    routes: Sequence[Route],
    cursor_us: int | None = None,
    *,
    tracks_pending: bool = False,
    exits_only: Collection[str] = (),
) -> MembershipChanges:
    """Record entries and exits of these profiles within `scope`, queue what their routes
    need, replace their timers, and move the cursor to `cursor_us`, in one transaction.

    Audiences named in `exits_only` (`exits: realtime` on a cadence; also in `scope`) are
    only ever left: a member stays while its outcome's `holding` names the audience, as read
    inside the transaction, so a member a compute recorded meanwhile is judged too and a
    profile a compute removed meanwhile is never entered again.

    Ids merged into an evaluated profile leave every name of the scope. Each profile is
    recorded under a lock on its id (and the ids merged into it), so two workers never
    interleave their diffs of one profile. Where the store tracks pending profiles (several
    workers, no cursor), an outcome whose `version` is no longer the profile's pending mark
    was evaluated from a history missing a newer event: nothing is recorded for it and it
    stays pending.
    """
    ids = list(dict.fromkeys(o.profile_id for o in outcomes))
    if not ids:
        return MembershipChanges(REALTIME_RUN, {}, {})
    with sql.transaction() as tx:
        id_rows = tx.among("ids", ids)
        merged = [(str(p), str(c)) for p, c in tx.run(MERGED, ids=id_rows)]
        tx.lock(*(LOCK_PREFIX + p for p in [*ids, *(p for p, _ in merged)]))
        kept = list(outcomes)
        if tracks_pending:
            marks = {str(p): int(v) for p, v in tx.run(MARKS, ids=id_rows)}
            kept = [o for o in outcomes if marks.get(o.profile_id, 0) == o.version]
            if not kept:
                return MembershipChanges(REALTIME_RUN, {}, {})
        changes = _record(
            tx, kept, merged, scope, at_most_last(at_us), routes, tracks_pending, exits_only
        )
        if cursor_us is not None and not tracks_pending:
            tx.run(MOVE_CURSOR, {"cursor": cursor_us})
    return changes


def _record(
    tx: Tx,
    kept: Sequence[ProfileOutcome],
    merged: Sequence[tuple[str, str]],
    scope: Sequence[tuple[str, str]],
    at: datetime,
    routes: Sequence[Route],
    tracks_pending: bool,
    exits_only: Collection[str] = (),
) -> MembershipChanges:
    """Diff, outbox, timers and pending marks of the outcomes kept; inside the locks."""
    evaluated = {o.profile_id for o in kept}
    aliases = [p for p, c in merged if c in evaluated]
    everyone = sorted(evaluated | set(aliases))
    who = tx.among("everyone", everyone)
    wanted = {
        (kind, name, o.profile_id): holdout
        for o in kept
        for (kind, name), holdout in o.members.items()
    }
    names = set(scope)
    held: dict[tuple[str, str, str], bool] = {}
    timers_held: set[tuple[str, str, int]] = set()
    leased = False
    for what, k, n, p, flag, due in tx.run(_HELD, everyone=who):
        if what == "timer":
            timers_held.add((str(p), str(k), int(due)))
            leased = leased or bool(flag)
        elif (str(k), str(n)) in names:
            held[(str(k), str(n), str(p))] = bool(flag)
    # Members of an exits-only audience stay, with their flag, while its rule holds.
    only = set(exits_only)
    staying = False
    for o in kept:
        for name in o.holding & only:
            key = ("audience", name, o.profile_id)
            if key in held:
                wanted[key] = held[key]
                staying = True
    if held == wanted:  # most evaluations change nothing: no diff, no plan
        changes = MembershipChanges(REALTIME_RUN, {}, {})
    else:
        c = tx.rows("c", COMPUTED, transposed(((*k, h) for k, h in wanted.items()), 4))
        s = tx.rows("s", _NAMES, transposed(scope, 2))
        within = (
            f" AND memberships.profile_id {who}"
            f" AND EXISTS (SELECT 1 FROM {s} WHERE s.kind = memberships.kind"
            " AND s.name = memberships.name)"
        )
        steps = frozenset(
            step
            for step, needed in (
                ("exits", any(k not in wanted for k in held)),
                ("holdouts", any(k in held and held[k] != h for k, h in wanted.items())),
                ("enters", any(k not in held for k in wanted)),
            )
            if needed
        )
        # Entries come only from the names not in `held`: a member of an exits-only audience
        # that a concurrent compute removed after `held` was read is never entered again.
        split = staying and "enters" in steps
        first = steps - _ENTERS_ONLY if split else steps
        changes = diff_memberships(tx, c, at, REALTIME_RUN, within, steps=first)
        if split:
            entering = ((*k, h) for k, h in wanted.items() if k not in held)
            c = tx.rows("c", COMPUTED, transposed(entering, 4))
            entered = diff_memberships(tx, c, at, REALTIME_RUN, within, steps=_ENTERS_ONLY)
            changes = MembershipChanges(REALTIME_RUN, entered.entered, changes.exited)
        plan_changes(tx, routes, datetime.now(UTC), profiles=everyone)
    due = {(o.profile_id, s, min(t, _LAST_US)) for o in kept for s, t in o.timers.items()}
    if leased or due != timers_held:  # recording a timer also ends its lease
        fresh = tx.rows(
            "fresh",
            (("profile_id", "text"), ("segment", "text"), ("due_at", "timestamptz")),
            transposed(((p, s, to_datetime(t)) for p, s, t in sorted(due)), 3),
        )
        tx.run(_DROP_TIMERS, everyone=who)
        tx.run(_ADD_TIMERS, fresh=fresh)
    if tracks_pending:
        # Ids merged into a recorded profile had their events folded into its history: their
        # marks (left from before the merge, which marked the survivor) go too.
        marks = tx.rows(
            "marks",
            (("profile_id", "text"), ("version", "bigint")),
            [
                [o.profile_id for o in kept] + aliases,
                [o.version for o in kept] + [None] * len(aliases),
            ],
        )
        tx.run(_CLEARMARKS, marks=marks)
    return changes
