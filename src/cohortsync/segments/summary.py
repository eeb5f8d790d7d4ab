"""Per-profile aggregates read from the store's event and property summaries (DuckDB).

The store keeps, per stored profile id and event key, the count and first and last timestamps
of its events (`event_summaries`), and the same per value of each summarised property
(`property_summaries`); see `store/duckdb_summaries.py`. A query that needs the latest order,
whether a subscription was ever started or the sum of revenue over the whole history reads
those rows (one per profile and event, or per value) instead of every event and its JSON.

Answers are exact as of any instant `at`. A summary row whose events all lie after `at` is
left out (`last_ts <= at`); a row with events on both sides of `at` cannot be split, so the
store reports which events and properties have such rows (`SummaryCoverage`), and those are
read from the log instead. When computing now none do; for a past instant most do, and the
query is the one a store without summaries would run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlglot import exp

from cohortsync.segments.ast import ComputedTrait, Ever, SegmentProject
from cohortsync.segments.scan import PID, col, sql_type, table_ref

EVENT_FUNCS = ("count", "latest", "earliest")
PROPERTY_FUNCS = ("count", "sum", "avg", "min", "max", "most_frequent")


@dataclass(frozen=True)
class SummaryCoverage:
    """What a store's summaries answer exactly as of one instant."""

    straddling_events: frozenset[str]  # events with a row on both sides of the instant
    properties: frozenset[tuple[str, str]]  # (event key, property) summarised and exact

    @classmethod
    def of(
        cls,
        straddling_events: Iterable[str],
        straddling_properties: Iterable[tuple[str, str]],
        summarised: Iterable[tuple[str, str]],
    ) -> SummaryCoverage:
        """From what the store reports (`DuckDBStore.summary_coverage`)."""
        exact = set(summarised) - set(straddling_properties)
        return cls(frozenset(straddling_events), frozenset(exact))

    def has_event(self, event: str) -> bool:
        """Whether the event's summaries are exact as of the instant."""
        return event not in self.straddling_events

    def has_property(self, event: str, prop: str) -> bool:
        """Whether the property's summaries on `event` are exact as of the instant."""
        return (event, prop) in self.properties


@dataclass(frozen=True)
class _Need:
    """One per-profile aggregate: `func` over an event's summaries (prop None) or a property's."""

    alias: str
    func: str
    event: str
    prop: str | None


def summarised_needs(
    project: SegmentProject, path: Callable[[list[str]], str]
) -> set[tuple[str, str, str]]:
    """The (event key, property, JSON pointer) triples a project's whole-history traits read,
    which the store should summarise (`path` renders a property's JSON pointer)."""
    return {
        (t.event, t.prop, path(t.prop.split(".")))
        for t in project.traits.values()
        if t.prop is not None and summarisable(t)
    }


def summarisable(trait: ComputedTrait) -> bool:
    """Whether a computed trait can be read from summaries (whole history, no filter)."""
    return (
        isinstance(trait.window, Ever)
        and not trait.where
        and trait.aggregation in (PROPERTY_FUNCS if trait.prop is not None else ("count",))
    )


class SummaryScan:
    """Collects the aggregates a query reads from summaries; builds them as grouped reads."""

    def __init__(self, at: exp.Expr, pick: Callable[[exp.Expr, exp.Expr], exp.Expr]) -> None:
        """`at`: the instant as a timestamp; `pick(value, count)`: the most frequent of
        grouped values."""
        self._at = at
        self._pick = pick
        self._needs: dict[tuple[str, str, str | None], _Need] = {}

    def __bool__(self) -> bool:
        return bool(self._needs)

    def event(self, func: str, event: str) -> exp.Column:
        """The per-profile count, latest or earliest timestamp of `event` at or before the
        instant (NULL: none)."""
        assert func in EVENT_FUNCS
        return self._need(func, event, None)

    def prop(self, func: str, event: str, prop: str) -> exp.Column:
        """The per-profile aggregate of a property over `event` at or before the instant:
        `count` of present values, `sum`/`avg`/`min`/`max` of numbers, or the `most_frequent`
        JSON text (NULL: none)."""
        assert func in PROPERTY_FUNCS
        return self._need(func, event, prop)

    def _need(self, func: str, event: str, prop: str | None) -> exp.Column:
        key = (func, event, prop)
        found = self._needs.get(key)
        if found is None:
            found = self._needs[key] = _Need(f"u{len(self._needs)}", func, event, prop)
        return col(found.alias)

    # -- building ------------------------------------------------------------------------------
    def build(self) -> list[exp.Subquery]:
        """`(SELECT pid, <aggregates> ... GROUP BY pid) AS g<i>`: events, then properties."""
        out: list[exp.Subquery] = []
        events = [n for n in self._needs.values() if n.prop is None]
        props = [n for n in self._needs.values() if n.prop is not None]
        if events:
            out.append(self._events(events).subquery(f"g{len(out)}", copy=False))
        # Numbers are summed straight from the rows; a most frequent value needs each value's
        # whole count first (a merged profile's counts come from several stored profiles).
        picked = [n for n in props if n.func == "most_frequent"]
        numeric = [n for n in props if n.func != "most_frequent"]
        for part in (numeric, picked):
            if part:
                out.append(self._props(part).subquery(f"g{len(out)}", copy=False))
        return out

    def _before(self, column: str, table: str | None = None) -> exp.Expr:
        return exp.LTE(this=col(column, table), expression=self._at.copy())

    def _canonical(self, table: str, where: exp.Expr, columns: list[str]) -> exp.Select:
        """Rows of a summary table (events up to the instant) under the profile each stored
        profile id belongs to now."""
        pid = exp.Coalesce(this=col("canonical_id", "a"), expressions=[col("profile_id", "s")])
        on = exp.EQ(this=col("profile_id", "a"), expression=col("profile_id", "s"))
        return (
            exp.select(
                exp.alias_(pid, PID, copy=False), *(col(c, "s") for c in columns), copy=False
            )
            .from_(exp.alias_(table_ref(table), "s", table=True, copy=False), copy=False)
            .join(
                exp.alias_(table_ref("profile_aliases"), "a", table=True, copy=False),
                on=on,
                join_type="left",
                copy=False,
            )
            .where(exp.and_(where, self._before("last_ts", "s"), copy=False), copy=False)
        )

    def _events(self, needs: list[_Need]) -> exp.Select:
        """Per profile: counts and first / last timestamps of the needed events."""
        names = sorted({n.event for n in needs})
        rows = self._canonical(
            "event_summaries",
            _in(col("event_key", "s"), names),
            ["event_key", "n", "first_ts", "last_ts"],
        )
        columns: list[exp.Expr] = [col(PID)]
        for need in needs:
            value: exp.Expr = {
                "count": exp.Sum(this=col("n")),
                "latest": exp.Max(this=col("last_ts")),
                "earliest": exp.Min(this=col("first_ts")),
            }[need.func]
            only = exp.EQ(this=col("event_key"), expression=exp.Literal.string(need.event))
            if len(names) > 1:
                value = exp.Filter(this=value, expression=exp.Where(this=only))
            columns.append(exp.alias_(value, need.alias, copy=False))
        return (
            exp.select(*columns, copy=False)
            .from_(rows.subquery("c", copy=False), copy=False)
            .group_by(col(PID), copy=False)
        )

    def _props(self, needs: list[_Need]) -> exp.Select:
        """Per profile: aggregates of the needed properties, from each value's count (summed
        per profile and value first when a most frequent value is picked)."""
        pairs = sorted({(n.event, n.prop) for n in needs if n.prop is not None})
        rows = self._canonical(
            "property_summaries",
            exp.paren(exp.or_(*(_pair(e, p, "s") for e, p in pairs), copy=False), copy=False),
            ["event_key", "prop", "value", "n"],
        )
        value_columns = [col("event_key"), col("prop"), col("value")]
        if any(n.func == "most_frequent" for n in needs):
            rows = (
                exp.select(
                    col(PID),
                    *(c.copy() for c in value_columns),
                    exp.alias_(exp.Sum(this=col("n")), "n", copy=False),
                    copy=False,
                )
                .from_(rows.subquery("c", copy=False), copy=False)
                .group_by(col(PID), *(c.copy() for c in value_columns), copy=False)
            )
        columns: list[exp.Expr] = [col(PID)]
        for need in needs:
            columns.append(exp.alias_(self._aggregate(need), need.alias, copy=False))
        return (
            exp.select(*columns, copy=False)
            .from_(rows.subquery("v", copy=False), copy=False)
            .group_by(col(PID), copy=False)
        )

    def _aggregate(self, need: _Need) -> exp.Expr:
        """The aggregate over (value, n) rows of one profile; NULL when it has none."""
        assert need.prop is not None
        only = _pair(need.event, need.prop)
        number = exp.TryCast(this=col("value"), to=sql_type("DOUBLE"))
        numeric = exp.not_(exp.Is(this=number.copy(), expression=exp.null()), copy=False)
        if need.func == "most_frequent":
            return self._pick(exp.Case(ifs=[exp.If(this=only, true=col("value"))]), col("n"))
        weighted = exp.Mul(this=col("n"), expression=number.copy())
        value: exp.Expr
        if need.func in ("sum", "avg"):
            value = exp.Sum(this=weighted)
        elif need.func == "count":
            value = exp.Sum(this=col("n"))
        else:
            value = (exp.Min if need.func == "min" else exp.Max)(this=number.copy())
        value = exp.Filter(this=value, expression=exp.Where(this=only.copy()))
        if need.func != "avg":
            return value
        counted = exp.Filter(
            this=exp.Sum(this=col("n")),
            expression=exp.Where(this=exp.and_(only.copy(), numeric, copy=False)),
        )
        return exp.Div(this=value, expression=counted)


def _pair(event: str, prop: str, table: str | None = None) -> exp.Expr:
    """`event_key = event AND prop = prop`."""
    return exp.paren(
        exp.and_(
            exp.EQ(this=col("event_key", table), expression=exp.Literal.string(event)),
            exp.EQ(this=col("prop", table), expression=exp.Literal.string(prop)),
            copy=False,
        ),
        copy=False,
    )


def _in(column: exp.Expr, values: list[str]) -> exp.Expr:
    """`column = v` for one value, `column IN (...)` for several."""
    if len(values) == 1:
        return exp.EQ(this=column, expression=exp.Literal.string(values[0]))
    return exp.In(this=column, expressions=[exp.Literal.string(v) for v in values])
