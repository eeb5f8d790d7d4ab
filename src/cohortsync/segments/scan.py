"""One scan of `profile_events` shared by every event condition and computed trait of a query.

Instead of one scan per condition, a query registers what it needs here (counts, latest
timestamps, aggregates of a property, each over one event name, a time span and a `where`
filter) and gets back a column of the per-profile aggregate. `build` then emits one selective
scan (only the event names used, each within the time span its uses need, properties parsed
only on the rows of the event that needs them) grouped by profile with one `FILTER` aggregate
per registered need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlglot import exp

PID = "pid"
EV = "ev"
TS = "ts"
SCAN_ALIAS = "f"


@dataclass(frozen=True)
class Span:
    """Inclusive bounds of an event's timestamp in microseconds (`lo` None: no lower bound)."""

    lo: int | None
    hi: int

    def covers(self, other: Span) -> bool:
        """Whether every instant of `other` lies inside this span."""
        lower = self.lo is None or (other.lo is not None and other.lo >= self.lo)
        return lower and other.hi <= self.hi

    def union(self, other: Span) -> Span:
        """The smallest span covering both."""
        lo = None if self.lo is None or other.lo is None else min(self.lo, other.lo)
        return Span(lo, max(self.hi, other.hi))


@dataclass(frozen=True)
class _Projection:
    """A per-row column computed only on rows of `event` (NULL on the others)."""

    alias: str
    event: str
    expr: exp.Expr
    type: str


@dataclass(frozen=True)
class _Aggregate:
    """One per-profile aggregate: `func(value)` over rows of `event` in `span` passing `where`."""

    alias: str
    func: str  # count | max_ts | sum | avg | min | max
    event: str
    span: Span
    where: str | None  # a boolean projection
    value: str | None  # a projection (None: count rows)
    distinct: bool


def _col(name: str, table: str | None = None) -> exp.Column:
    """A quoted column reference."""
    return exp.column(name, table=table, quoted=True)


def sql_type(name: str) -> exp.DataType:
    """A SQL type by name, built without parsing (compile time matters at small scale)."""
    return exp.DataType(this=exp.DataType.Type[name])


def table_ref(name: str) -> exp.Table:
    """An unquoted table reference, built without parsing."""
    return exp.Table(this=exp.to_identifier(name))


class EventScan:
    """Collects the per-profile aggregates a query needs; builds them as one grouped scan."""

    def __init__(self, instant: Callable[[int], exp.Expr]) -> None:
        self._instant = instant
        self._spans: dict[str, Span] = {}
        self._projections: dict[tuple[object, ...], _Projection] = {}
        self._aggregates: dict[tuple[object, ...], _Aggregate] = {}

    def __bool__(self) -> bool:
        """Whether anything was registered (else no scan is needed)."""
        return bool(self._aggregates)

    def _use(self, event: str, span: Span) -> None:
        old = self._spans.get(event)
        self._spans[event] = span if old is None else old.union(span)

    def project(self, event: str, key: tuple[object, ...], expr: exp.Expr, type_: str) -> str:
        """A column holding `expr` (on `properties`) for rows of `event`; its name."""
        full = (event, *key)
        found = self._projections.get(full)
        if found is None:
            found = _Projection(f"c{len(self._projections)}", event, expr, type_)
            self._projections[full] = found
        return found.alias

    def aggregate(
        self,
        func: str,
        event: str,
        span: Span,
        where: str | None = None,
        value: str | None = None,
        distinct: bool = False,
    ) -> exp.Column:
        """The per-profile column of `func` over `event` rows in `span` (NULL: no such rows)."""
        self._use(event, span)
        key = (func, event, span, where, value, distinct)
        found = self._aggregates.get(key)
        if found is None:
            alias = f"a{len(self._aggregates)}"
            found = _Aggregate(alias, func, event, span, where, value, distinct)
            self._aggregates[key] = found
        return _col(found.alias, SCAN_ALIAS)

    # -- building ----------------------------------------------------------------------------
    def _ts_bounds(self, span: Span, within: Span | None) -> list[exp.Expr]:
        """Predicates keeping `span` on `ts`, skipping bounds that `within` already enforces."""
        ts = _col(TS)
        preds: list[exp.Expr] = []
        if span.lo is not None and (within is None or within.lo is None or within.lo < span.lo):
            preds.append(exp.GTE(this=ts, expression=self._instant(span.lo)))
        if within is None or within.hi > span.hi:
            preds.append(exp.LTE(this=ts.copy(), expression=self._instant(span.hi)))
        return preds

    def _rows(self) -> exp.Select:
        """The scan: relevant events of every profile, with each projection on its own rows."""
        events = sorted(self._spans)
        event_key = exp.column("event_key", quoted=True)
        columns: list[exp.Expr] = [
            exp.alias_(exp.column("canonical_profile_id", quoted=True), PID, copy=False),
            exp.alias_(event_key.copy(), EV, copy=False),
            exp.alias_(exp.column("timestamp", quoted=True), TS, copy=False),
        ]
        for proj in self._projections.values():
            only = exp.EQ(this=event_key.copy(), expression=exp.Literal.string(proj.event))
            case = exp.Case(ifs=[exp.If(this=only, true=proj.expr.copy())])
            columns.append(
                exp.alias_(
                    exp.cast(case, sql_type(proj.type), copy=False),
                    proj.alias,
                    copy=False,
                )
            )
        hi = max(span.hi for span in self._spans.values())
        # Events sharing a span are read by one condition: `event_key IN (...) AND ts ...`.
        groups: dict[Span, list[str]] = {}
        for event in events:
            groups.setdefault(self._spans[event], []).append(event)
        ts = exp.column("timestamp", quoted=True)
        preds: list[exp.Expr] = [
            _in(event_key.copy(), events),
            exp.LTE(this=ts.copy(), expression=self._instant(hi)),
        ]
        if any(span.lo is not None or span.hi < hi for span in groups):
            alternatives: list[exp.Expr] = []
            for span, names in groups.items():
                bounds: list[exp.Expr] = []
                if len(groups) > 1:
                    bounds.append(_in(event_key.copy(), names))
                if span.lo is not None:
                    bounds.append(exp.GTE(this=ts.copy(), expression=self._instant(span.lo)))
                if span.hi < hi:
                    bounds.append(exp.LTE(this=ts.copy(), expression=self._instant(span.hi)))
                alternatives.append(exp.and_(*bounds, copy=False))
            preds.append(
                exp.or_(*alternatives, copy=False) if len(alternatives) > 1 else alternatives[0]
            )
        return (
            exp.select(*columns, copy=False)
            .from_(table_ref("profile_events"), copy=False)
            .where(exp.and_(*preds, copy=False), copy=False)
        )

    def build(self) -> exp.Subquery:
        """`(SELECT pid, a0, a1, ... FROM scan GROUP BY pid) AS f`."""
        columns: list[exp.Expr] = [_col(PID)]
        for agg in self._aggregates.values():
            preds: list[exp.Expr] = [
                exp.EQ(this=_col(EV), expression=exp.Literal.string(agg.event)),
                *self._ts_bounds(agg.span, self._spans[agg.event]),
            ]
            if agg.where is not None:
                preds.append(_col(agg.where))
            func: exp.Expr
            if agg.func == "count":
                if agg.value is None:
                    func = exp.Count(this=exp.Star())
                elif agg.distinct:
                    func = exp.Count(this=exp.Distinct(expressions=[_col(agg.value)]))
                else:
                    func = exp.Count(this=_col(agg.value))
            elif agg.func == "max_ts":
                func = exp.Max(this=_col(TS))
            else:
                assert agg.value is not None
                cls = {"sum": exp.Sum, "avg": exp.Avg, "min": exp.Min, "max": exp.Max}[agg.func]
                func = cls(this=_col(agg.value))
            filtered = exp.Filter(
                this=func, expression=exp.Where(this=exp.and_(*preds, copy=False))
            )
            columns.append(exp.alias_(filtered, agg.alias, copy=False))
        grouped = (
            exp.select(*columns, copy=False)
            .from_(self._rows().subquery("e", copy=False), copy=False)
            .group_by(_col(PID), copy=False)
        )
        return grouped.subquery(SCAN_ALIAS, copy=False)


def _in(column: exp.Expr, values: list[str]) -> exp.Expr:
    """`column = v` for one value, `column IN (...)` for several."""
    if len(values) == 1:
        return exp.EQ(this=column, expression=exp.Literal.string(values[0]))
    return exp.In(this=column, expressions=[exp.Literal.string(v) for v in values])
