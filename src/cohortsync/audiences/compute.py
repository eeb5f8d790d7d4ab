"""Compute every segment and audience as of an instant, and record the changes as history."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from cohortsync.audiences.holdout import holdout_sql
from cohortsync.audiences.rule import rule_sql
from cohortsync.errors import InputError
from cohortsync.moments import to_datetime
from cohortsync.segments.ast import SegmentProject
from cohortsync.segments.compile import Compiler, compiler_for, with_summaries
from cohortsync.store.base import HistoryAheadError, MembershipChanges, Store
from cohortsync.store.outbox import Route
from cohortsync.sync.memberships import record_compute

SEGMENT = "segment"
AUDIENCE = "audience"
MEMBERSHIPS = pa.schema(
    [("kind", pa.string()), ("name", pa.string()), ("profile_id", pa.string()),
     ("holdout", pa.bool_())]
)  # fmt: skip
"""One row per membership of a compute: what `sync.memberships.record_compute` diffs."""
_FLAGS = "cohortsync_flags"


@dataclass(frozen=True)
class Computed:
    """Members of every segment and audience at one instant, as one Arrow table of
    (kind, name, profile_id, holdout) (`MEMBERSHIPS`), in no particular order; `segment_names`
    and `audience_names` list every name, members or not, in the project's order."""

    at_us: int
    table: pa.Table
    segment_names: tuple[str, ...]
    audience_names: tuple[str, ...]

    def members(self, kind: str, name: str) -> pa.Table:
        """The rows of one segment or audience, sorted by profile id."""
        rows = self.table.filter(
            pc.and_(pc.equal(self.table["kind"], kind), pc.equal(self.table["name"], name))
        )
        return rows.sort_by("profile_id")

    @cached_property
    def segments(self) -> dict[str, list[str]]:
        """Sorted member ids of every segment, as Python lists (built when first asked)."""
        return {
            name: self.members(SEGMENT, name)["profile_id"].to_pylist()
            for name in self.segment_names
        }

    @cached_property
    def audiences(self) -> dict[str, list[tuple[str, bool]]]:
        """(profile_id, holdout) of every audience, sorted by id (built when first asked)."""
        found: dict[str, list[tuple[str, bool]]] = {}
        for name in self.audience_names:
            rows = self.members(AUDIENCE, name)
            ids, flags = rows["profile_id"].to_pylist(), rows["holdout"].to_pylist()
            found[name] = list(zip(ids, flags, strict=True))
        return found

    def ids(self, kind: str, name: str) -> set[str]:
        """The member ids of one segment or audience."""
        return set(self.members(kind, name)["profile_id"].to_pylist())

    def sizes(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(members, holdout members) of every (kind, name) with a member."""
        counts = self.table.group_by(["kind", "name"]).aggregate(
            [("profile_id", "count"), ("holdout", "sum")]
        )
        return {
            (str(k), str(n)): (int(c), int(h or 0))
            for k, n, c, h in zip(
                counts["kind"].to_pylist(),
                counts["name"].to_pylist(),
                counts["profile_id_count"].to_pylist(),
                counts["holdout_sum"].to_pylist(),
                strict=True,
            )
        }


@dataclass(frozen=True)
class NameReport:
    """One segment or audience after a compute: its size and what changed (None when the
    compute was only evaluated: nothing was recorded, so nothing entered or exited)."""

    kind: str
    name: str
    size: int
    entered: int | None
    exited: int | None
    holdout: int = 0


@dataclass(frozen=True)
class ComputeReport:
    """What one compute found, and whether it was recorded (`run_id` None when not, `reason`
    saying why)."""

    run_id: int | None
    as_of: datetime
    duration_ms: float
    rows: list[NameReport] = field(default_factory=list)
    recorded: bool = True
    reason: str | None = None

    def row(self, name: str, kind: str | None = None) -> NameReport:
        """The report line of one name (an audience first when a segment shares its name)."""
        for kind_ in (kind,) if kind else (AUDIENCE, SEGMENT):
            for row in self.rows:
                if row.kind == kind_ and row.name == name:
                    return row
        raise KeyError(name)


def compute_members(
    store: Store, project: SegmentProject, at_us: int, compiler: Compiler | None = None
) -> Computed:
    """Members of every segment and audience as of `at_us`, computed on the store; no writes.

    One query does it all in the engine: every segment's per-profile flag (one scan of the
    events, each trait once), each audience's rule over those flags and its holdout hash,
    returned as one Arrow table of memberships.
    """
    compiler = compiler or with_summaries(compiler_for(store.dialect), store, project, at_us)
    if project.segments:
        sql = compiler.render(members_query(compiler, project, at_us))
        table = store.query_arrow(sql).select(MEMBERSHIPS.names).cast(MEMBERSHIPS)
    else:
        table = MEMBERSHIPS.empty_table()
    return Computed(at_us, table, tuple(project.segments), tuple(project.audiences))


def members_query(compiler: Compiler, project: SegmentProject, at_us: int) -> exp.Query:
    """One query of (kind, name, profile_id, holdout): a row per member of every segment and
    audience. The segments' per-profile flags are computed once (a materialised CTE); each
    segment and audience selects its members from them, audiences flagging their holdout."""
    plan = compiler.compile_members(project, list(project.segments), at_us)
    profile_id = exp.column("profile_id", quoted=True)
    parts: list[exp.Select] = []

    def part(kind: str, name: str, where: exp.Expr, holdout: exp.Expr) -> None:
        columns = [
            exp.alias_(exp.Literal.string(kind), "kind", copy=False),
            exp.alias_(exp.Literal.string(name), "name", copy=False),
            profile_id.copy(),
            exp.alias_(holdout, "holdout", copy=False),
        ]
        parts.append(exp.select(*columns).from_(_FLAGS).where(where, copy=False))

    for name, column in plan.columns.items():
        part(SEGMENT, name, exp.column(column, quoted=True), exp.false())
    for name, audience in project.audiences.items():
        holdout = holdout_sql(name, profile_id.copy(), audience.holdout_percent, compiler.dialect)
        part(AUDIENCE, name, rule_sql(audience.condition, plan.columns), holdout)
    union: exp.Query = parts[0]
    for other in parts[1:]:
        union = exp.union(union, other, distinct=False, copy=False)
    flags = exp.select("*").from_(
        exp.Subquery(this=union, alias=exp.TableAlias(this=exp.to_identifier("m")))
    )
    return flags.with_(_FLAGS, as_=plan.query, materialized=True, copy=False)


def _segment_members(
    store: Store,
    project: SegmentProject,
    at_us: int,
    compiler: Compiler,
    *,
    through_table: bool = False,
) -> dict[str, list[str]]:
    """Sorted members of every segment, from one query of per-profile flags (a cross-check of
    `compute_members`, which does this and the audiences in one query).

    The store reads the query's flags in one go (`Store.flagged_members`); `through_table`
    instead fills a temporary table and reads each segment's column.
    """
    plan = compiler.compile_members(project, list(project.segments), at_us)
    if not through_table:
        return store.flagged_members(compiler.render(plan.query), plan.columns)
    table = exp.to_table(f"cohortsync_members_{uuid.uuid4().hex}")
    create = exp.Create(
        this=table,
        kind="TABLE",
        expression=plan.query,
        properties=exp.Properties(expressions=[exp.TemporaryProperty()]),
    )
    drop = exp.Drop(tables=[table.copy()], kind="TABLE", exists=True)
    nothing = exp.select(exp.cast(exp.null(), exp.DataType.build("VARCHAR")).as_("profile_id"))
    segments: dict[str, list[str]] = {}
    try:
        for i, (name, column) in enumerate(plan.columns.items()):
            flagged = (
                exp.select(exp.column("profile_id", quoted=True))
                .from_(table.copy())
                .where(exp.column(column, quoted=True))
                .order_by(exp.column("profile_id", quoted=True))
            )
            sql = compiler.render(flagged)
            if i == 0:  # the table is filled by the same call that reads its first segment
                sql = f"{compiler.render(create)};\n{sql}"
            # One row per live profile: ids are unique, and sorted already (sorted() then
            # only checks, in linear time, that the engine's order is Python's).
            segments[name] = sorted(store.profile_ids(sql))
    finally:
        store.profile_ids(
            f"{compiler.render(drop)};\n{compiler.render(nothing.where(exp.false()))}"
        )
    return segments


BEFORE_HISTORY = "before the recorded history"
IN_FUTURE = "in the future: add --record-future to record"


def compute(
    store: Store,
    project: SegmentProject,
    at_us: int,
    compiler: Compiler | None = None,
    routes: Sequence[Route] = (),
    scope: Sequence[tuple[str, str]] | None = None,
) -> ComputeReport:
    """Compute everything as of `at_us` and record entries and exits in one transaction.

    History only moves forward: an instant before the latest run's is refused (read the past
    with `members --at` instead). Computing twice at the same instant changes nothing. The
    changes each of `routes` (audience → destination) needs go to the outbox in that same
    transaction. With `scope`, only those (kind, name) are recorded (a scheduled refresh of
    some audiences leaves every other name, and the real-time ones, as they are).
    """
    started = time.perf_counter()
    last = store.last_compute_as_of()
    if last is not None and at_us < last:
        raise _history_ahead(last)
    computed = compute_members(store, project, at_us, compiler)
    try:
        return _record(store, computed, started, routes, scope)
    except HistoryAheadError:
        raise _history_ahead(store.last_compute_as_of() or at_us) from None


def compute_at(
    store: Store,
    project: SegmentProject,
    at_us: int,
    now_us: int,
    *,
    record_future: bool = False,
    routes: Sequence[Route] = (),
) -> ComputeReport:
    """Compute everything as of `at_us`: recorded when it extends the history, else evaluated.

    An instant before the latest recorded one is an as-of evaluation, printed and not recorded
    (history only moves forward). One after `now_us` is recorded only with `record_future`:
    once recorded, every compute at an earlier instant (a plain one included, until the clock
    reaches it) is an evaluation too.
    """
    started = time.perf_counter()
    last = store.last_compute_as_of()
    if last is not None and at_us < last:
        return _evaluate(store, project, at_us, started, _before_history(last))
    if at_us > now_us and not record_future:
        return _evaluate(store, project, at_us, started, IN_FUTURE)
    computed = compute_members(store, project, at_us)
    try:
        return _record(store, computed, started, routes, None)
    except HistoryAheadError:  # another compute recorded a later instant meanwhile
        reason = _before_history(store.last_compute_as_of() or at_us)
        return _report(computed, None, started, reason)


def _history_ahead(last_us: int) -> InputError:
    return InputError(
        f"membership history already runs to {to_datetime(last_us).isoformat()}: compute at "
        "or after it (to see an earlier instant, use `cohortsync members NAME --at TIME`)"
    )


def _before_history(last_us: int) -> str:
    return f"{BEFORE_HISTORY}, which runs to {to_datetime(last_us).isoformat()}"


def _evaluate(
    store: Store, project: SegmentProject, at_us: int, started: float, reason: str
) -> ComputeReport:
    """Members as of `at_us`, reported and not recorded."""
    return _report(compute_members(store, project, at_us), None, started, reason)


def _record(
    store: Store,
    computed: Computed,
    started: float,
    routes: Sequence[Route],
    scope: Sequence[tuple[str, str]] | None,
) -> ComputeReport:
    """Record `computed` (only `scope` when given) and report what changed."""
    if scope is not None:
        computed = _within(computed, set(scope))
    changes = record_compute(store.sql, computed.table, computed.at_us, started, routes, scope)
    return _report(computed, changes, started)


def _report(
    computed: Computed,
    changes: MembershipChanges | None,
    started: float,
    reason: str | None = None,
) -> ComputeReport:
    """Sizes and holdouts of every name; entries and exits when `changes` were recorded."""

    def moved(counts: dict[tuple[str, str], int], key: tuple[str, str]) -> int | None:
        return None if changes is None else counts.get(key, 0)

    entered = {} if changes is None else changes.entered
    exited = {} if changes is None else changes.exited
    sizes = computed.sizes()
    rows: list[NameReport] = []
    for kind, names in ((SEGMENT, computed.segment_names), (AUDIENCE, computed.audience_names)):
        for name in names:
            key = (kind, name)
            size, held = sizes.get(key, (0, 0))
            rows.append(NameReport(kind, name, size, moved(entered, key), moved(exited, key), held))
    known = {(r.kind, r.name) for r in rows}
    for kind, name in sorted(set(exited) - known):  # removed from the project file
        rows.append(NameReport(kind, name, 0, 0, exited[(kind, name)]))
    duration = (time.perf_counter() - started) * 1000
    run_id = None if changes is None else changes.run_id
    at = to_datetime(computed.at_us)
    return ComputeReport(run_id, at, duration, rows, recorded=changes is not None, reason=reason)


def _within(computed: Computed, scope: set[tuple[str, str]]) -> Computed:
    """Only the names of `scope`."""
    table = computed.table
    keep = pc.is_in(
        pc.binary_join_element_wise(table["kind"], table["name"], "\x00"),
        value_set=pa.array([f"{k}\x00{n}" for k, n in sorted(scope)], pa.string()),
    )
    return Computed(
        computed.at_us,
        table.filter(keep),
        tuple(n for n in computed.segment_names if (SEGMENT, n) in scope),
        tuple(n for n in computed.audience_names if (AUDIENCE, n) in scope),
    )
