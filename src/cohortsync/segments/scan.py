"""Selective scans of `profile_events` shared by every event condition and trait of a query.

Instead of one scan per condition, a query registers what it needs here (counts, latest
timestamps, aggregates of a property, each over one event name, a time span and a `where`
filter) and gets back the column of that per-profile aggregate. `build` then emits one grouped
scan per time span: the event names read over that span (`event_key IN (...)` and timestamp
bounds, which the engine pushes into the table scan), properties parsed only on rows of the
event that needs them, and one `FILTER` aggregate per need. Narrow scans with few aggregates each
beat one wide scan: fewer rows carry every filter, and properties are read only where needed.

Aggregate columns have names unique in the query (`a0`, `a1`, …, `m0`), so they are referred
to unqualified whichever scan provides them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import inf

from sqlglot import exp

PID = "pid"
EV = "ev"
TS = "ts"
MERGE_RECENT = 7 * 86_400_000_000  # µs: recent windows within a week share one scan


@dataclass(frozen=True)
class Span:
    """Inclusive bounds of an event's timestamp in microseconds (`lo` None: no lower bound)."""

    lo: int | None
    hi: int

    def union(self, other: Span) -> Span:
        """The smallest span covering both."""
        lo = None if self.lo is None or other.lo is None else min(self.lo, other.lo)
        return Span(lo, max(self.hi, other.hi))


@dataclass(frozen=True)
class _Column:
    """A per-row column computed on the rows of `event`: `expr` over `properties`."""

    alias: str
    event: str
    expr: exp.Expr
    type: str


@dataclass(frozen=True)
class _Aggregate:
    """One per-profile aggregate: `func(value)` over rows of `event` in `span` passing `where`."""

    alias: str
    func: str  # count | latest | earliest | sum | avg | min | max | most_frequent
    event: str
    span: Span
    where: str | None  # a boolean column
    value: str | None  # a column (None: count rows)


def col(name: str, table: str | None = None) -> exp.Column:
    """A quoted column reference."""
    return exp.column(name, table=table, quoted=True)


def sql_type(name: str) -> exp.DataType:
    """A SQL type by name, built without parsing (compile time matters at small scale)."""
    return exp.DataType(this=exp.DataType.Type[name])


def table_ref(name: str) -> exp.Table:
    """An unquoted table reference, built without parsing."""
    return exp.Table(this=exp.to_identifier(name))


class EventScan:
    """Collects the per-profile aggregates a query needs; builds them as grouped scans."""

    def __init__(
        self,
        instant: Callable[[int], exp.Expr],
        pick: Callable[[exp.Expr, exp.Expr], exp.Expr] | None = None,
    ) -> None:
        """`instant(µs)` renders a timestamp; `pick(value, count)` aggregates the most frequent
        of grouped (value, count) rows, or is None when the dialect cannot (`most_frequent`)."""
        self._instant = instant
        self._pick = pick
        self._spans: dict[str, Span] = {}
        self._derived: dict[tuple[object, ...], _Column] = {}
        self._aggregates: dict[tuple[object, ...], _Aggregate] = {}
        self._keyed: _Aggregate | None = None
        self._scanned: dict[str, Span] = {}  # event -> the span its scan reads (set by build)
        self._shared: dict[str, bool] = {}  # event -> whether its scan reads other events too
        self._built: dict[str, Span] = {}  # alias of each read -> its span (set by build)

    def __bool__(self) -> bool:
        """Whether anything was registered (else no scan is needed)."""
        return bool(self._aggregates) or self._keyed is not None

    def spans(self) -> dict[str, Span]:
        """The span read of each event registered so far."""
        return dict(self._spans)

    def _use(self, event: str, span: Span) -> None:
        old = self._spans.get(event)
        self._spans[event] = span if old is None else old.union(span)

    # -- registering ---------------------------------------------------------------------------
    def derive(self, event: str, key: tuple[object, ...], expr: exp.Expr, type_: str) -> str:
        """A column of `expr` (over `properties`) on rows of `event` (NULL on others); its name.

        Each should call the engine's JSON functions once: within a scan of several events
        the expression sits in a CASE, where the engine does not share repeated calls.
        """
        full = (event, *key)
        found = self._derived.get(full)
        if found is None:
            found = _Column(f"c{len(self._derived)}", event, expr, type_)
            self._derived[full] = found
        return found.alias

    def aggregate(
        self,
        func: str,
        event: str,
        span: Span,
        where: str | None = None,
        value: str | None = None,
    ) -> exp.Column:
        """The per-profile column of `func` over `event` rows in `span` (NULL: no such rows).

        `func` is `count` (rows, or non-NULL `value`s), or `sum`, `avg`, `min`, `max` of
        `value`; or `latest` / `earliest`, the timestamp of the latest / earliest row of the
        event passing `where` among all its scanned rows, which cover `span` and end at or
        before its end: one column answers "any such event since X" for every X in the query.
        """
        self._use(event, span)
        key: tuple[object, ...] = (func, event, where, value)
        if func not in ("latest", "earliest"):
            key = (*key, span)
        found = self._aggregates.get(key)
        if found is None:
            found = _Aggregate(f"a{len(self._aggregates)}", func, event, span, where, value)
            self._aggregates[key] = found
        return col(found.alias)

    @property
    def can_pick_most_frequent(self) -> bool:
        """Whether `most_frequent` can be read from this scan (the dialect can, none yet)."""
        return self._pick is not None and self._keyed is None

    def most_frequent(self, event: str, span: Span, where: str | None, value: str) -> exp.Column:
        """The most frequent `value` (a JSON column) per profile; one per query.

        Its scan groups by (profile, value) first, so each value's count is known, then by
        profile, combining the other aggregates' partial results.
        """
        assert self.can_pick_most_frequent
        self._use(event, span)
        self._keyed = _Aggregate("m0", "most_frequent", event, span, where, value)
        return col("m0")

    # -- building ------------------------------------------------------------------------------
    def _branches(self) -> dict[Span, list[str]]:
        """The scans: events grouped by the span they are read over.

        Events read over all their history share one scan. Recent windows are merged while
        their union spans at most `MERGE_RECENT`: reading a few more recent rows costs less
        than another scan and join. Longer spans stay apart (merging 90 days of orders with 14
        days of page views would read 76 days of page views for nothing).
        """
        exact: dict[Span, list[str]] = {}
        for event in sorted(self._spans):
            exact.setdefault(self._spans[event], []).append(event)
        merged: dict[Span, list[str]] = {}
        whole = [s for s in exact if s.lo is None]
        if whole:
            merged[Span(None, max(s.hi for s in whole))] = [e for s in whole for e in exact[s]]
        current: Span | None = None
        events: list[str] = []
        for span in sorted((s for s in exact if s.lo is not None), key=lambda s: -(s.lo or 0)):
            union = span if current is None else current.union(span)
            assert union.lo is not None
            if current is not None and union.hi - union.lo > MERGE_RECENT:
                merged[current] = events
                union, events = span, []
            current, events = union, [*events, *exact[span]]
        if current is not None:
            merged[current] = events
        return merged

    def build(self) -> list[exp.Subquery]:
        """One `(SELECT pid, <aggregates> FROM <scan> GROUP BY pid) AS f<i>` per scan."""
        branches = self._branches()
        self._scanned = {event: span for span, events in branches.items() for event in events}
        self._shared = {event: len(events) > 1 for events in branches.values() for event in events}
        out: list[exp.Subquery] = []
        self._built = {f"f{i}": span for i, span in enumerate(branches)}
        for i, (span, events) in enumerate(branches.items()):
            names = set(events)
            aggregates = [a for a in self._aggregates.values() if a.event in names]
            keyed = self._keyed if self._keyed is not None and self._keyed.event in names else None
            rows = self._rows(span, events).subquery("e", copy=False)
            if keyed is None:
                grouped = self._grouped(rows, aggregates)
            else:
                grouped = self._grouped_keyed(rows, aggregates, keyed)
            out.append(grouped.subquery(f"f{i}", copy=False))
        return out

    def width(self, read: exp.Subquery) -> float:
        """How many µs of history a read built here covers (anything else: infinite)."""
        span = self._built.get(read.alias)
        return inf if span is None or span.lo is None else span.hi - span.lo

    def _rows(self, span: Span, events: list[str]) -> exp.Select:
        """The rows of `events` in `span`, with their property columns."""
        event_key = exp.column("event_key", quoted=True)
        ts = exp.column("timestamp", quoted=True)
        preds: list[exp.Expr] = [_in(event_key.copy(), events)]
        if span.lo is not None:
            preds.append(exp.GTE(this=ts.copy(), expression=self._instant(span.lo)))
        preds.append(exp.LTE(this=ts.copy(), expression=self._instant(span.hi)))
        base: list[exp.Expr] = [
            exp.alias_(exp.column("canonical_profile_id", quoted=True), PID, copy=False),
            exp.alias_(ts.copy(), TS, copy=False),
        ]
        if len(events) > 1:  # a scan of one event needs no event column (nor reads one)
            base.append(exp.alias_(event_key.copy(), EV, copy=False))
        for column in self._derived.values():
            if column.event not in events:
                continue
            value = column.expr.copy()
            if len(events) > 1:
                only = exp.EQ(this=event_key.copy(), expression=exp.Literal.string(column.event))
                value = exp.Case(ifs=[exp.If(this=only, true=value)])
            typed = exp.cast(value, sql_type(column.type), copy=False)
            base.append(exp.alias_(typed, column.alias, copy=False))
        return (
            exp.select(*base, copy=False)
            .from_(table_ref("profile_events"), copy=False)
            .where(exp.and_(*preds, copy=False), copy=False)
        )

    def _filter(self, agg: _Aggregate) -> exp.Expr | None:
        """The rows an aggregate reads among its scan's: its event (when the scan reads
        several), its span (where narrower), its `where`; None when it reads them all."""
        preds: list[exp.Expr] = []
        if self._shared[agg.event]:
            preds.append(exp.EQ(this=col(EV), expression=exp.Literal.string(agg.event)))
        scanned = self._scanned[agg.event]
        span = agg.span
        if agg.func not in ("latest", "earliest"):  # those read every scanned row
            if span.lo is not None and (scanned.lo is None or scanned.lo < span.lo):
                preds.append(exp.GTE(this=col(TS), expression=self._instant(span.lo)))
            if scanned.hi > span.hi:
                preds.append(exp.LTE(this=col(TS), expression=self._instant(span.hi)))
        if agg.where is not None:
            preds.append(col(agg.where))
        return exp.and_(*preds, copy=False) if preds else None

    def _filtered(self, func: exp.Expr, agg: _Aggregate) -> exp.Expr:
        """`func FILTER (WHERE <agg's rows>)`, or `func` when it reads every row."""
        where = self._filter(agg)
        return func if where is None else exp.Filter(this=func, expression=exp.Where(this=where))

    @staticmethod
    def _function(func: str, value: str | None) -> exp.Expr:
        """The aggregate function over the scanned rows."""
        if func == "count":
            return exp.Count(this=exp.Star() if value is None else col(value))
        if func == "latest":
            return exp.Max(this=col(TS))
        if func == "earliest":
            return exp.Min(this=col(TS))
        assert value is not None
        cls = {"sum": exp.Sum, "avg": exp.Avg, "min": exp.Min, "max": exp.Max}[func]
        return cls(this=col(value))

    def _grouped(self, rows: exp.Subquery, aggregates: list[_Aggregate]) -> exp.Select:
        """`SELECT pid, <aggregate> FILTER (WHERE ...) ... FROM rows GROUP BY pid`."""
        columns: list[exp.Expr] = [col(PID)]
        for agg in aggregates:
            filtered = self._filtered(self._function(agg.func, agg.value), agg)
            columns.append(exp.alias_(filtered, agg.alias, copy=False))
        return (
            exp.select(*columns, copy=False).from_(rows, copy=False).group_by(col(PID), copy=False)
        )

    def _grouped_keyed(
        self, rows: exp.Subquery, aggregates: list[_Aggregate], keyed: _Aggregate
    ) -> exp.Select:
        """Group by (profile, value), then by profile, combining partial aggregates."""
        assert self._pick is not None and keyed.value is not None
        only = self._filter(keyed)
        key: exp.Expr = col(keyed.value)
        if only is not None:
            key = exp.Case(ifs=[exp.If(this=only, true=key)])
        inner: list[exp.Expr] = [
            col(PID),
            exp.alias_(key, "k", copy=False),
            exp.alias_(exp.Count(this=exp.Star()), "kn", copy=False),
        ]
        outer: list[exp.Expr] = [col(PID)]
        for agg in aggregates:
            parts = [("count", agg.value), ("sum", agg.value)] if agg.func == "avg" else [
                (agg.func, agg.value)]  # fmt: skip
            names = [f"{agg.alias}_{i}" for i in range(len(parts))]
            for (func, value), name in zip(parts, names, strict=True):
                part = self._filtered(self._function(func, value), agg)
                inner.append(exp.alias_(part, name, copy=False))
            combined: exp.Expr
            if agg.func in ("count", "sum"):
                combined = exp.Sum(this=col(names[0]))
            elif agg.func in ("latest", "max"):
                combined = exp.Max(this=col(names[0]))
            elif agg.func in ("earliest", "min"):
                combined = exp.Min(this=col(names[0]))
            else:  # avg: the sum of sums over the sum of counts
                total = exp.Sum(this=col(names[1]))
                count = exp.Nullif(
                    this=exp.Sum(this=col(names[0])), expression=exp.Literal.number(0)
                )
                combined = exp.Div(this=total, expression=count)
            outer.append(exp.alias_(combined, agg.alias, copy=False))
        outer.append(exp.alias_(self._pick(col("k"), col("kn")), keyed.alias, copy=False))
        grouped = (
            exp.select(*inner, copy=False)
            .from_(rows, copy=False)
            .group_by(col(PID), col("k"), copy=False)
        )
        return (
            exp.select(*outer, copy=False)
            .from_(grouped.subquery("g", copy=False), copy=False)
            .group_by(col(PID), copy=False)
        )


def _in(column: exp.Expr, values: list[str]) -> exp.Expr:
    """`column = v` for one value, `column IN (...)` for several."""
    if len(values) == 1:
        return exp.EQ(this=column, expression=exp.Literal.string(values[0]))
    return exp.In(this=column, expressions=[exp.Literal.string(v) for v in values])
