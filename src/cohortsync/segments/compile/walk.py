"""The walk of a segment's AST into one query: conditions, referenced segments and traits
become boolean and value expressions over the shared scans of the event log (`scan.EventScan`),
the store's per-profile summaries (`summary.SummaryScan`) and a few joined reads.

The dialect (JSON functions, text order, how `most_frequent` is picked) is the compiler's; the
walk is the same for every back end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from cohortsync.errors import InputError
from cohortsync.segments.anchor import output_columns, rejects_nulls
from cohortsync.segments.ast import (
    After,
    All,
    AnyOf,
    Before,
    Between,
    Comparison,
    ComputedTrait,
    Condition,
    EventCondition,
    HasIdentifier,
    Not,
    SegmentProject,
    SegmentRef,
    TraitCondition,
    Within,
)
from cohortsync.segments.compile.terms import (
    COUNT_OPS,
    KIND_JSON,
    KIND_NUMBER,
    and_,
    false_if_null,
    literal,
    window_span,
)
from cohortsync.segments.scan import MERGE_RECENT, EventScan, Span, col, table_ref
from cohortsync.segments.summary import SummaryScan, summarisable

if TYPE_CHECKING:
    from cohortsync.segments.compile.compiler import Compiler


def _count_holds(op: str, n: int, count: int) -> bool:
    """Whether `n OP count` is true."""
    return {
        "eq": n == count, "ne": n != count, "gt": n > count,
        "gte": n >= count, "lt": n < count, "lte": n <= count,
    }[op]  # fmt: skip


def _same_for_any(op: str, count: int) -> bool:
    """Whether `n OP count` is the same for every n >= 1 (so only "any event?" matters)."""
    first = _count_holds(op, 1, count)
    return all(_count_holds(op, n, count) == first for n in range(2, max(count, 1) + 2))


def _any_event(cond: Condition) -> bool:
    """Whether `cond` asks only for at least one matching event (the default count)."""
    return (
        isinstance(cond, EventCondition)
        and cond.count_op in COUNT_OPS
        and _same_for_any(cond.count_op, cond.count)
        and _count_holds(cond.count_op, 1, cond.count)
        and not _count_holds(cond.count_op, 0, cond.count)
    )


def _closes(between: Condition, gap: Condition) -> bool:
    """Whether `between` is an event in [at - older, at - newer] and `gap` is "none of the
    same events in the last d" with d >= newer: together, the latest lies in that window."""
    if not (_any_event(between) and isinstance(gap, Not) and _any_event(gap.condition)):
        return False
    assert isinstance(between, EventCondition) and isinstance(gap.condition, EventCondition)
    inner = gap.condition
    return (
        isinstance(between.window, Between)
        and isinstance(inner.window, Within)
        and inner.event == between.event
        and inner.where == between.where
        and inner.window.duration.micros >= between.window.newer.micros
    )


def _starting_read(reads: list[exp.Subquery], where: exp.Expr | None) -> exp.Subquery | None:
    """The first of `reads` without whose row `where` never holds: the query's start."""
    if where is None:
        return None
    for read in reads:
        if rejects_nulls(where, output_columns(read)):
            return read
    return None


class QueryWalk:
    """The state of one query being compiled: its shared scan, its joins, what it has built."""

    def __init__(self, compiler: Compiler, project: SegmentProject | None, at_us: int) -> None:
        self.c = compiler
        self.project = project
        self.at = at_us
        self.scan = EventScan(compiler._at, compiler.most_frequent_picker())
        self.summary = self._summary_scan(compiler, at_us)
        self._either: list[tuple[exp.Column, str, Span]] = []  # see `_per_event`
        self._joins: list[tuple[exp.Expr, str]] = []
        self._traits: dict[str, tuple[exp.Expr, str]] = {}
        self._identify: dict[str, exp.Expr] = {}
        self._segments: dict[str, exp.Expr] = {}
        self._anchor_lo: dict[tuple[str, str], int] = {}  # (event, repr(where)): see `_all`

    @staticmethod
    def _summary_scan(compiler: Compiler, at_us: int) -> SummaryScan | None:
        """The reader of the store's summaries, when the compiler was told what they hold."""
        pick = compiler.most_frequent_picker()
        if compiler.summaries is None or pick is None:
            return None
        return SummaryScan(compiler._at(at_us), pick)

    def _per_event(self, func: str, event: str, span: Span, where: str | None) -> exp.Expr:
        """A per-profile count / latest / earliest timestamp of `event` rows in `span`: read
        from the summaries when they hold it exactly (no filter; counts over the whole history
        up to the instant), else from a scan of the log."""
        covered = self.c.summaries is not None and self.c.summaries.has_event(event)
        if self.summary is not None and covered and where is None:
            whole = span.lo is None
            if func == "latest" and span.hi == self.at and not whole:
                # A recent window: decided once every scan is known (`_settle`).
                placeholder = col(f"l{len(self._either)}")
                self._either.append((placeholder, event, span))
                return placeholder
            if (func == "latest" and span.hi == self.at) or (
                whole and (func == "earliest" or span.hi == self.at)
            ):
                return self.summary.event(func, event)
        return self.scan.aggregate(func, event, span, where)

    def _settle(self) -> None:
        """Read each recent "latest" need from a scan of the log when its window is a week or
        less (a log in arrival order keeps those rows in its last row groups, which the scan's
        time bounds skip to), when a scan reads its event already, or when one would cover its
        window within a week (a few more rows in that scan cost less than reading the
        summaries); else from the summaries."""
        assert self.summary is not None or not self._either
        for placeholder, event, span in self._either:
            spans = self.scan.spans()
            near = any(
                s.lo is not None and s.union(span).hi - (s.union(span).lo or 0) <= MERGE_RECENT
                for s in spans.values()
            )
            short = span.lo is not None and span.hi - span.lo <= MERGE_RECENT
            if event in spans or near or short:
                column = self.scan.aggregate("latest", event, span)
            else:
                assert self.summary is not None
                column = self.summary.event("latest", event)
            placeholder.set("this", exp.to_identifier(column.name, quoted=True))
        self._either = []

    def _summarised(self, trait: ComputedTrait) -> bool:
        """Whether a computed trait is read from the store's summaries."""
        coverage = self.c.summaries
        if self.summary is None or coverage is None or not summarisable(trait):
            return False
        if trait.prop is None:
            return coverage.has_event(trait.event)
        return coverage.has_property(trait.event, trait.prop)

    def _join(self, query: exp.Select, prefix: str) -> str:
        """Left-join `query` (one row per profile_id) to the profiles; its alias."""
        alias = f"{prefix}{len(self._joins)}"
        self._joins.append((query.subquery(alias, copy=False), alias))
        return alias

    def select(self, columns: list[exp.Expr], where: exp.Expr | None) -> exp.Select:
        """`SELECT columns FROM profiles p [LEFT JOIN ...] WHERE live [AND where]`, or, when
        `where` cannot hold without a row of one read of the events, `FROM (that read) p`."""
        self._settle()
        reads = [
            *(self.scan.build() if self.scan else ()),
            *(self.summary.build() if self.summary else ()),
        ]
        narrow_first = sorted(reads, key=self.scan.width)  # summaries read every profile's row
        start = _starting_read(narrow_first, where)
        if start is None:
            base: exp.Expr = exp.alias_(table_ref("profiles"), "p", table=True, copy=False)
        else:
            reads.remove(start)
            # Its ids are canonical, so live: it becomes `p`, its pid `p.profile_id`.
            start.this.select(exp.alias_(col("pid"), "profile_id", copy=False), copy=False)
            base = start.this.subquery("p", copy=False)
        query = exp.select(*columns, copy=False).from_(base, copy=False)
        pid = col("profile_id", "p")
        for read in reads:
            on = exp.EQ(this=col("pid", read.alias), expression=pid.copy())
            query = query.join(read, on=on, join_type="left", copy=False)
        for sub, alias in self._joins:
            on = exp.EQ(this=col("profile_id", alias), expression=pid.copy())
            query = query.join(sub, on=on, join_type="left", copy=False)
        if start is not None:
            assert where is not None
            return query.where(where, copy=False)
        live = exp.Is(this=col("merged_into", "p"), expression=exp.null())
        return query.where(live if where is None else and_(live, where), copy=False)

    # -- conditions -------------------------------------------------------------------------
    def condition(self, cond: Condition, stack: tuple[str, ...]) -> exp.Expr:
        """A boolean expression (never NULL) over the query's columns for `cond`."""
        if isinstance(cond, EventCondition):
            return self._event(cond)
        if isinstance(cond, TraitCondition):
            return self._trait_condition(cond)
        if isinstance(cond, HasIdentifier):
            holders = (
                exp.select(col("profile_id"), copy=False)
                .from_(table_ref("identities"), copy=False)
                .where(
                    exp.EQ(this=col("kind"), expression=exp.Literal.string(cond.kind)), copy=False
                )
            )
            return exp.In(this=col("profile_id", "p"), query=holders.subquery(copy=False))
        if isinstance(cond, SegmentRef):
            return self._segment(cond.name, stack)
        if isinstance(cond, All):
            return exp.and_(*self._all(cond.conditions, stack), copy=False) \
                if cond.conditions else exp.true()  # fmt: skip
        if isinstance(cond, AnyOf):
            return exp.or_(*(self.condition(c, stack) for c in cond.conditions), copy=False) \
                if cond.conditions else exp.false()  # fmt: skip
        if isinstance(cond, Not):
            return exp.not_(self.condition(cond.condition, stack), copy=False)
        raise InputError(f"unknown condition {cond!r}")

    def _all(self, conds: tuple[Condition, ...], stack: tuple[str, ...]) -> list[exp.Expr]:
        """The conjuncts of `all`, "an event between X and Y ago and none in the last Y" (the
        lapsed pattern) read as one test of its latest timestamp (`_last_between`).

        A conjunct "an event E passing W since `lo`" means the latest such event is at or after
        `lo` whenever `all` can hold, so an anchor on (E, W) anywhere under it is read from
        `lo` on (`_anchor_lo`): a week of deliveries instead of the whole history. When that
        conjunct is false, `all` is false whatever the anchor read.
        """
        pairs: dict[int, int] = {}  # index of the window -> index of the gap closing it
        for i, cond in enumerate(conds):
            for j, gap in enumerate(conds):
                if i not in pairs and j not in pairs.values() and _closes(cond, gap):
                    pairs[i] = j
        gaps = set(pairs.values())
        outer = self._anchor_lo
        self._anchor_lo = dict(outer)
        for cond in conds:
            if isinstance(cond, EventCondition) and _any_event(cond):
                lo = window_span(cond.window, self.at).lo  # Within, Between: their start
                key = (cond.event, repr(cond.where))
                if lo is not None:
                    self._anchor_lo[key] = max(lo, self._anchor_lo.get(key, lo))
        out: list[exp.Expr] = []
        for i, cond in enumerate(conds):
            if i in pairs:
                gap = conds[pairs[i]]
                assert isinstance(cond, EventCondition) and isinstance(gap, Not)
                assert isinstance(gap.condition, EventCondition)
                out.append(self._last_between(cond, gap.condition))
            elif i not in gaps:
                out.append(self.condition(cond, stack))
        self._anchor_lo = outer
        return out

    def _last_between(self, between: EventCondition, within: EventCondition) -> exp.Expr:
        """An event in [at - older, at - newer] and none in the last d >= newer: the latest
        since at - older exists and is at or before at - d. One latest timestamp, which the
        summaries hold, instead of a count over the window and a scan of its events."""
        assert isinstance(between.window, Between) and isinstance(within.window, Within)
        where = self._where(between.event, between.where)
        lo = self.at - between.window.older.micros
        latest = self._per_event("latest", between.event, Span(lo, self.at), where)
        last_allowed = self.at - within.window.duration.micros
        inside = exp.Between(this=latest, low=self.c._at(lo), high=self.c._at(last_allowed))
        return false_if_null(inside)  # read from the summaries, the latest may be before lo

    def _segment(self, name: str, stack: tuple[str, ...]) -> exp.Expr:
        """A referenced segment's expression (built once per query, then shared)."""
        if name in stack:
            raise InputError(f"segment {name!r} refers to itself")
        assert self.project is not None
        if name not in self.project.segments:
            raise InputError(f"unknown segment {name!r}")
        built = self._segments.get(name)
        if built is None:
            outer, self._anchor_lo = self._anchor_lo, {}  # it is shared: built on its own
            inner = self.condition(self.project.segments[name].condition, (*stack, name))
            built = self._segments[name] = exp.paren(inner, copy=False)
            self._anchor_lo = outer
        return built

    def _where(self, event: str, where: tuple[Comparison, ...]) -> str | None:
        """The scan column of `where` on `event` rows (None when there is no filter)."""
        if not where:
            return None
        doc = col("properties")
        preds = (self.c._compare(doc, w.field.split("."), w.op, w.value) for w in where)
        return self.scan.derive(event, ("where", repr(where)), and_(*preds), "BOOLEAN")

    def _event(self, cond: EventCondition) -> exp.Expr:
        """`count OP n` of matching events, from the shared scan.

        When only "any matching event?" matters (`count` defaults to at least one), the
        answer comes from the latest (or, for `before`, earliest) matching timestamp, one
        column per event and filter whatever the window, instead of one count per window.
        """
        if cond.count_op not in COUNT_OPS:
            raise InputError(f"unknown count operator {cond.count_op!r}")
        op, count, window = cond.count_op, cond.count, cond.window
        where = self._where(cond.event, cond.where)
        span = window_span(window, self.at)
        at_zero, at_one = _count_holds(op, 0, count), _count_holds(op, 1, count)
        # "Any event after the anchor?" compares two latest timestamps, unless `within` bounds
        # the window: then it is a count of its own read, as any other count after an anchor.
        bounded = isinstance(window, After) and window.within is not None
        if not _same_for_any(op, count) or (bounded and at_zero != at_one):
            if isinstance(window, After):
                counted = self._after_count(cond)
                return and_(
                    self._anchored(window), COUNT_OPS[op](this=counted, expression=literal(count))
                )
            n = self._per_event("count", cond.event, span, where)
            zero = exp.Coalesce(this=n, expressions=[exp.Literal.number(0)])
            return COUNT_OPS[op](this=zero, expression=literal(count))
        if at_zero == at_one:  # the count does not matter
            if isinstance(window, After):
                return self._anchored(window) if at_zero else exp.false()
            return exp.true() if at_zero else exp.false()
        found: exp.Expr
        if isinstance(window, After):
            # Any event after the anchor: the latest is later than the anchor (so it is read
            # from where the anchor is known to be, as the anchor is).
            latest = self._per_event("latest", cond.event, self._anchor_span(window), where)
            found = false_if_null(exp.GT(this=latest, expression=self._anchor_ts(window)))
            # Without the anchor event the condition is false, whatever the count.
            return found if at_one else and_(self._anchored(window), exp.not_(found, copy=False))
        if isinstance(window, Between):
            n = self._per_event("count", cond.event, span, where)
            found = exp.GTE(
                this=exp.Coalesce(this=n, expressions=[exp.Literal.number(0)]),
                expression=exp.Literal.number(1),
            )
        elif isinstance(window, Before):
            earliest = self._per_event("earliest", cond.event, span, where)
            found = false_if_null(exp.LTE(this=earliest, expression=self.c._at(span.hi)))
        else:
            latest = self._per_event("latest", cond.event, span, where)
            if span.lo is None:
                found = exp.not_(exp.Is(this=latest, expression=exp.null()), copy=False)
            else:
                found = false_if_null(exp.GTE(this=latest, expression=self.c._at(span.lo)))
        return found if at_one else exp.not_(found, copy=False)

    def _anchor_span(self, window: After) -> Span:
        """Where the anchor of `window` is read: up to the instant, from where an enclosing
        `all` says it is (`_all`), else over the whole history."""
        return Span(self._anchor_lo.get((window.event, repr(window.where))), self.at)

    def _anchor_ts(self, window: After) -> exp.Expr:
        """The timestamp of the profile's anchor: its latest anchor event passing the anchor's
        `where` at or before the instant (NULL when none)."""
        where = self._where(window.event, window.where)
        return self._per_event("latest", window.event, self._anchor_span(window), where)

    def _anchored(self, window: After) -> exp.Expr:
        """The profile has the anchor event (at or before the instant)."""
        return exp.not_(exp.Is(this=self._anchor_ts(window), expression=exp.null()), copy=False)

    def _after_count(self, cond: EventCondition) -> exp.Expr:
        """The number of matching events in the window after the anchor (0 when none), read on
        its own."""
        window = cond.window
        assert isinstance(window, After)
        lo = self._anchor_span(window).lo
        rows = self.c._after_rows(cond.event, cond.where, window, self.at, anchor_lo=lo)
        pid = col("canonical_profile_id")
        counts = (
            exp.select(
                exp.alias_(pid, "profile_id", copy=False),
                exp.alias_(exp.Count(this=exp.Star()), "n", copy=False),
                copy=False,
            )
            .from_(rows.subquery("e", copy=False), copy=False)
            .group_by(pid.copy(), copy=False)
        )
        alias = self._join(counts, "n")
        return exp.Coalesce(this=col("n", alias), expressions=[exp.Literal.number(0)])

    # -- traits -----------------------------------------------------------------------------
    def _trait_condition(self, cond: TraitCondition) -> exp.Expr:
        """A trait (computed first, else identify) compared with a literal; never NULL."""
        comp = cond.comparison
        traits = self.project.traits if self.project is not None else {}
        head, _, rest = comp.field.partition(".")
        if comp.field in traits or head in traits:
            key, parts = (comp.field, []) if comp.field in traits else (head, rest.split("."))
            value, kind = self.trait_value(traits[key])
        else:
            name, *parts = comp.field.split(".")
            value, kind = self._identify_trait(name), KIND_JSON
        if kind == KIND_JSON:
            return self.c._compare(value, parts, comp.op, comp.value)
        return self.c._compare_number(value, parts, comp.op, comp.value)

    def _identify_trait(self, name: str) -> exp.Expr:
        """The JSON value of an identify trait (NULL when the profile has none)."""
        if name not in self._identify:
            rows = (
                exp.select(col("profile_id"), col("value"), copy=False)
                .from_(table_ref("profile_traits"), copy=False)
                .where(exp.EQ(this=col("name"), expression=exp.Literal.string(name)), copy=False)
            )
            self._identify[name] = col("value", self._join(rows, "t"))
        return self._identify[name].copy()

    def trait_value(self, trait: ComputedTrait) -> tuple[exp.Expr, str]:
        """(SQL value, kind) of a computed trait: a number (NULL: none; counts: 0) or JSON."""
        found = self._traits.get(trait.name)
        if found is None:
            found = self._traits[trait.name] = self._build_trait(trait)
        return found[0].copy(), found[1]

    def _build_trait(self, trait: ComputedTrait) -> tuple[exp.Expr, str]:
        agg, prop, event = trait.aggregation, trait.prop, trait.event
        if prop is None and agg != "count":
            raise InputError(f"trait {trait.name!r}: {agg} needs a property")
        value: exp.Expr
        span = window_span(trait.window, self.at)
        own_rows = agg in ("first", "last", "distinct_count") or isinstance(trait.window, After)
        if agg == "most_frequent" and not self.scan.can_pick_most_frequent:
            own_rows = True
        if self.summary is not None and self._summarised(trait):
            if prop is None:
                value = self.summary.event("count", event)
            else:
                value = self.summary.prop(agg, event, prop)
        elif own_rows:
            value = col("v", self._join(self.c._trait_rows(trait, self.at), "x"))
        elif agg == "most_frequent":
            assert prop is not None
            where = self._where(event, trait.where)
            value = self.scan.most_frequent(event, span, where, self._json_column(event, prop))
        else:
            where = self._where(event, trait.where)
            if prop is None:
                value = self.scan.aggregate("count", event, span, where)
            elif agg == "count":
                value = self.scan.aggregate(
                    "count", event, span, where, self._json_column(event, prop)
                )
            else:
                column = self._number_column(event, prop)
                value = self.scan.aggregate(agg, event, span, where, column)
        if agg in ("count", "distinct_count"):
            return exp.Coalesce(this=value, expressions=[exp.Literal.number(0)]), KIND_NUMBER
        if agg in ("sum", "avg", "min", "max"):
            return value, KIND_NUMBER
        return value, KIND_JSON

    def _json_column(self, event: str, prop: str) -> str:
        """Scan column: the property's JSON text on `event` rows (NULL when missing or null)."""
        text = self.c._serialised(col("properties"), self.c.json_path(prop.split(".")))
        value = exp.Nullif(this=text, expression=exp.Literal.string("null"))
        return self.scan.derive(event, ("json", prop), value, "VARCHAR")

    def _number_column(self, event: str, prop: str) -> str:
        """Scan column: the property as a DOUBLE on `event` rows when it is a JSON number."""
        number = self.c._number(col("properties"), self.c.json_path(prop.split(".")))
        return self.scan.derive(event, ("number", prop), number, "DOUBLE")
