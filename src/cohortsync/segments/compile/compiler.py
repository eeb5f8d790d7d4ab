"""Compile segments, audiences and computed traits into SQL (sqlglot expressions) over the store.

A query reads the event log in a few selective scans (`scan.EventScan`): every event condition
and computed trait it needs becomes a `FILTER` aggregate of the scan covering its time window,
and each condition is a boolean expression over those per-profile columns, evaluated on every
live profile (`profiles.merged_into IS NULL`), or, when it cannot hold without a row of one
read, on that read's profiles only (`anchor`). Every leaf expression is TRUE or FALSE, never
NULL, so `not`/`all`/`any` are plain NOT/AND/OR and keep the boolean algebra exact. Segments
referenced several times, and traits used by several conditions, are computed once per query;
`compile_members` computes every segment of a project in one query.

Every user value is bound as a sqlglot literal; no SQL is assembled from strings. A JSON null
property is treated as missing, like an absent key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from sqlglot import exp

from cohortsync.errors import InputError
from cohortsync.moments import to_datetime
from cohortsync.segments.ast import (
    After,
    Comparison,
    ComputedTrait,
    Condition,
    SegmentProject,
    SegmentRef,
    Window,
)
from cohortsync.segments.compile.terms import (
    COUNT_OPS,
    KIND_JSON,
    NUMERIC_TYPES,
    TS,
    and_,
    false_if_null,
    literal,
    one_of,
    or_,
    window_span,
)
from cohortsync.segments.compile.walk import QueryWalk
from cohortsync.segments.scan import col, sql_type, table_ref
from cohortsync.segments.summary import SummaryCoverage, summarised_needs
from cohortsync.store.base import Store


def _plain(text: str) -> bool:
    """Whether a string serialises as JSON without escapes (`"` + text + `"`)."""
    return not any(c in '"\\' or c < " " for c in text)


@dataclass(frozen=True)
class MembersQuery:
    """One query of every live profile with a boolean column per segment (`columns[name]`)."""

    query: exp.Select
    columns: dict[str, str]


class Compiler:
    """Builds sqlglot queries for segments and traits; `dialect` picks SQL and JSON functions."""

    dialect = "duckdb"
    reads_summaries: ClassVar[bool] = False
    """Whether this back end can read a store's per-profile summaries (`with_summaries`)."""

    def __init__(self, summaries: SummaryCoverage | None = None) -> None:
        """`summaries`: what the store's summaries answer exactly (None: read the log only)."""
        self.summaries = summaries
        """What the store's per-profile summaries answer exactly (`segments/summary.py`); None:
        read only the event log."""

    # -- dialect hooks -------------------------------------------------------------------
    def json_path(self, parts: list[str]) -> exp.Expr:
        """The path literal for a nested key (JSON pointer, `~` and `/` escaped)."""
        escaped = [p.replace("~", "~0").replace("/", "~1") for p in parts]
        return exp.Literal.string("/" + "/".join(escaped) if escaped else "$")

    def json_type(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """JSON type name of the value at path (NULL when missing)."""
        return exp.Anonymous(this="json_type", expressions=[doc, path])

    def json_text(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The value at path as text (strings unquoted)."""
        return exp.Anonymous(this="json_extract_string", expressions=[doc, path])

    def json_value(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The value at path as JSON."""
        return exp.Anonymous(this="json_extract", expressions=[doc, path])

    def to_json(self, value: exp.Expr) -> exp.Expr:
        """A SQL value converted to JSON."""
        return exp.Anonymous(this="to_json", expressions=[value])

    def text_order(self, text: exp.Expr) -> exp.Expr:
        """Text as it sorts by code point (the engine's default collation may follow a locale)."""
        return text

    def most_frequent_picker(self) -> Callable[[exp.Expr, exp.Expr], exp.Expr] | None:
        """An aggregate picking the most frequent of grouped (JSON value, count) rows, ties
        broken as `ast.py` says; None when the dialect has none (a window ranks them instead)."""
        return None

    def _tie_keys(self, value: exp.Expr) -> list[exp.Expr]:
        """most_frequent's tie order of a JSON value: type rank, number, text, JSON text."""
        kind = self.json_type(value, exp.Literal.string("$"))
        numeric = exp.In(this=kind, expressions=[exp.Literal.string(t) for t in NUMERIC_TYPES])
        rank = exp.Case(
            ifs=[
                exp.If(this=numeric, true=exp.Literal.number(0)),
                exp.If(
                    this=exp.EQ(this=kind.copy(), expression=exp.Literal.string("VARCHAR")),
                    true=exp.Literal.number(1),
                ),
                exp.If(
                    this=exp.EQ(this=kind.copy(), expression=exp.Literal.string("BOOLEAN")),
                    true=exp.Literal.number(2),
                ),
            ],
            default=exp.Literal.number(3),
        )
        text = self.json_text(value.copy(), exp.Literal.string("$"))
        number = exp.Case(
            ifs=[exp.If(this=numeric.copy(), true=exp.TryCast(this=text, to=sql_type("DOUBLE")))],
            default=exp.Literal.number(0),
        )
        string = exp.Case(
            ifs=[exp.If(this=numeric.copy(), true=exp.Literal.string(""))], default=text.copy()
        )
        return [rank, number, string, exp.cast(value.copy(), sql_type("VARCHAR"), copy=False)]

    def render(self, expr: exp.Expr, pretty: bool = False) -> str:
        """The query as SQL text in this compiler's dialect (`pretty`: indented, for reading).

        Compiled queries share sub-expressions (a segment referenced twice is one node), which
        generating SQL reads but never changes, so the tree is not copied first.
        """
        return expr.sql(dialect=self.dialect, pretty=pretty, copy=False)

    # -- helpers ---------------------------------------------------------------------------
    def _at(self, micros: int) -> exp.Expr:
        """A TIMESTAMPTZ literal for an instant in microseconds."""
        stamp = to_datetime(micros)
        text = stamp.strftime("%Y-%m-%d %H:%M:%S.%f") + "+00"
        return exp.cast(exp.Literal.string(text), sql_type("TIMESTAMPTZ"), copy=False)

    def _after(self, ts: exp.Expr, micros: int) -> exp.Expr:
        """`ts` plus a duration (an interval of microseconds: no calendar, no time zone)."""
        interval = exp.Interval(this=exp.Literal.string(str(micros)), unit=exp.var("MICROSECOND"))
        return exp.Add(this=ts, expression=interval)

    def _window(self, window: Window, at_us: int, table: str) -> list[exp.Expr]:
        """Timestamp predicates for a window (an After window is read by `_after_rows`)."""
        span = window_span(window, at_us)
        preds: list[exp.Expr] = []
        if span.lo is not None:
            preds.append(exp.GTE(this=col(TS, table), expression=self._at(span.lo)))
        preds.append(exp.LTE(this=col(TS, table), expression=self._at(span.hi)))
        return preds

    def _after_rows(
        self,
        event: str,
        where: tuple[Comparison, ...],
        window: After,
        at_us: int,
        anchor_lo: int | None = None,
        wide: bool = False,
    ) -> exp.Select:
        """The rows of `event` passing `where` in an After window as of `at` (columns
        canonical_profile_id, timestamp, and with `wide` message_id and properties).

        One scan of both events: each row is marked (a matching event? an anchor?), and each
        profile's anchor is the latest mark, a window aggregate. A join of the events with the
        anchors would depend on the engine's row estimates, which a freshly loaded store lacks;
        properties are read before the window, which then carries only what is asked for.
        `anchor_lo`: the anchor is known to be no older, nor is what follows it.
        """
        doc = col("properties")

        def passing(name: str, filters: tuple[Comparison, ...]) -> exp.Expr:
            preds = (self._compare(doc, c.field.split("."), c.op, c.value) for c in filters)
            return and_(exp.EQ(this=col("event_key"), expression=exp.Literal.string(name)), *preds)

        carried = ["message_id", "properties"] if wide else []
        bounds = [
            one_of(col("event_key"), sorted({event, window.event})),
            exp.LTE(this=col(TS), expression=self._at(at_us)),
        ]
        if anchor_lo is not None:
            bounds.append(exp.GTE(this=col(TS), expression=self._at(anchor_lo)))
        mark = exp.Case(ifs=[exp.If(this=passing(window.event, window.where), true=col(TS))])
        marked = (
            exp.select(
                col("canonical_profile_id"),
                col(TS),
                exp.alias_(passing(event, where), "counted", copy=False),
                exp.alias_(mark, "mark", copy=False),
                *(col(c) for c in carried),
                copy=False,
            )
            .from_(table_ref("profile_events"), copy=False)
            .where(and_(*bounds), copy=False)
        )
        anchor = exp.Window(
            this=exp.Max(this=col("mark")), partition_by=[col("canonical_profile_id")]
        )
        anchored = exp.select(
            col("canonical_profile_id"),
            col(TS),
            col("counted"),
            exp.alias_(anchor, "anchor_ts", copy=False),
            *(col(c) for c in carried),
            copy=False,
        ).from_(marked.subquery("m", copy=False), copy=False)
        after = [col("counted"), exp.GT(this=col(TS), expression=col("anchor_ts"))]  # NULL: none
        if window.within is not None:
            end = self._after(col("anchor_ts"), window.within.micros)
            after.append(exp.LTE(this=col(TS), expression=end))
        return (
            exp.select(col("canonical_profile_id"), col(TS), *(col(c) for c in carried))
            .from_(anchored.subquery("w", copy=False), copy=False)
            .where(and_(*after), copy=False)
        )

    def _events(
        self, event: str, where: tuple[Comparison, ...], window: Window, at_us: int
    ) -> exp.Select:
        """Matching events `e` (columns profile_id, ts, message_id, properties) of one scan."""
        source: exp.Expr
        if isinstance(window, After):
            source = self._after_rows(event, where, window, at_us, wide=True)
            source = source.subquery("e", copy=False)
            preds: list[exp.Expr] = []
        else:
            source = exp.alias_(table_ref("profile_events"), "e", table=True, copy=False)
            doc = col("properties", "e")
            preds = [
                exp.EQ(this=col("event_key", "e"), expression=exp.Literal.string(event)),
                *self._window(window, at_us, "e"),
                *(self._compare(doc, c.field.split("."), c.op, c.value) for c in where),
            ]
        query = exp.select(
            exp.alias_(col("canonical_profile_id", "e"), "profile_id", copy=False),
            col(TS, "e"),
            col("message_id", "e"),
            col("properties", "e"),
            copy=False,
        ).from_(source, copy=False)
        return query.where(and_(*preds), copy=False) if preds else query

    # -- comparisons ----------------------------------------------------------------------
    # A comparison parses the JSON document once where it can: the property's serialised JSON
    # text is compared with the literal's (a string without quotes, backslashes or control
    # characters serialises as `"` + text + `"`, booleans as true / false), and numbers are
    # read by casting that text, which fails (NULL) for anything but a JSON number.

    def _serialised(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The value at path as JSON text (NULL when absent, `null` for JSON null)."""
        return exp.cast(self.json_value(doc, path), sql_type("VARCHAR"), copy=False)

    def _number(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The value at path as a DOUBLE when it is a JSON number, else NULL."""
        return exp.TryCast(this=self._serialised(doc, path), to=sql_type("DOUBLE"))

    def _present(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The value at path exists and is not JSON null; never NULL."""
        kind = self.json_type(doc, path)
        return false_if_null(exp.NEQ(this=kind, expression=exp.Literal.string("NULL")))

    def _is_string(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The value at path is a JSON string (NULL when absent)."""
        kind = self.json_type(doc, path)
        return exp.EQ(this=kind, expression=exp.Literal.string("VARCHAR"))

    def _equal_any(self, doc: exp.Expr, path: exp.Expr, values: list[Any]) -> exp.Expr:
        """The value at path equals one of `values` (same JSON type and value); never NULL."""
        texts: list[str] = []  # serialised forms compared in one IN
        strings: list[str] = []  # strings that serialise with escapes: compared unquoted
        numbers: list[int | float] = []
        for v in values:
            if isinstance(v, bool):
                texts.append("true" if v else "false")
            elif isinstance(v, int | float):
                numbers.append(v)
            elif isinstance(v, str) and _plain(v):
                texts.append(f'"{v}"')
            elif isinstance(v, str):
                strings.append(v)
        preds: list[exp.Expr] = []
        if texts:
            preds.append(one_of(self._serialised(doc, path), list(dict.fromkeys(texts))))
        if numbers:
            preds.append(one_of(self._number(doc, path), list(dict.fromkeys(numbers))))
        if strings:
            text = self.json_text(doc, path)
            found = one_of(text, list(dict.fromkeys(strings)))
            preds.append(and_(self._is_string(doc, path), found))
        return false_if_null(or_(*preds)) if preds else exp.false()

    def _compare_number(self, value: exp.Expr, parts: list[str], op: str, lit: Any) -> exp.Expr:
        """`trait OP lit` for a SQL number (NULL: missing), with `_compare`'s rules; never NULL."""
        present: exp.Expr = exp.not_(exp.Is(this=value, expression=exp.null()), copy=False)
        if parts:
            present = exp.false()  # a number has no keys to look into
        if op == "exists":
            return present if lit else exp.not_(present, copy=False)
        if op in ("in", "not_in"):
            lits = lit if isinstance(lit, list | tuple) else [lit]
            positive = or_(*(self._compare_number(value, parts, "eq", v) for v in lits))
        elif op == "ne":
            positive = self._compare_number(value, parts, "eq", lit)
        else:
            positive = exp.false()
        if op in ("ne", "not_in"):
            return and_(present, exp.not_(positive, copy=False))
        if op == "in":
            return positive
        if op == "contains" or isinstance(lit, bool) or not isinstance(lit, int | float):
            return exp.false()
        if op not in COUNT_OPS:
            raise InputError(f"unknown operator {op!r}")
        return exp.paren(
            and_(present, COUNT_OPS[op](this=value.copy(), expression=literal(lit))), copy=False
        )

    def _compare(self, doc: exp.Expr, parts: list[str], op: str, value: Any) -> exp.Expr:
        """SQL predicate for `prop OP value` on a JSON document; never NULL."""
        path = self.json_path(parts)
        if op == "exists":
            present = self._present(doc, path)
            return present if value else exp.not_(present, copy=False)
        if op in ("eq", "in", "ne", "not_in"):
            many = op in ("in", "not_in")
            values = list(value) if many and isinstance(value, list | tuple) else [value]
            positive = self._equal_any(doc, path, values)
            if op in ("eq", "in"):
                return positive
            # The exact complements of eq / in over present values (see ast.py).
            return and_(self._present(doc, path), exp.not_(positive, copy=False))
        if op not in ("contains", *COUNT_OPS):
            raise InputError(f"unknown operator {op!r}")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return exp.false()  # booleans only compare with eq; null and lists never
        if op == "contains":
            if not isinstance(value, str):
                return exp.false()
            position = exp.StrPosition(this=self.json_text(doc, path), substr=literal(value))
            found = exp.GT(this=position, expression=exp.Literal.number(0))
            return false_if_null(and_(self._is_string(doc, path), found))
        if isinstance(value, str):
            compared = COUNT_OPS[op](this=self.json_text(doc, path), expression=literal(value))
            return false_if_null(and_(self._is_string(doc, path), compared))
        return false_if_null(COUNT_OPS[op](this=self._number(doc, path), expression=literal(value)))

    # -- public entry points ----------------------------------------------------------------
    def compile_condition(
        self, condition: Condition, project: SegmentProject, at_us: int
    ) -> exp.Select:
        """Query of `profile_id` for every live profile satisfying `condition` as of `at_us`."""
        query = QueryWalk(self, project, at_us)
        return query.select([col("profile_id", "p")], query.condition(condition, ()))

    def compile_segment(self, name: str, project: SegmentProject, at_us: int) -> exp.Select:
        """Query of `profile_id` for every live profile in segment `name` as of `at_us`."""
        if name not in project.segments:
            raise InputError(f"unknown segment {name!r}")
        return self.compile_condition(SegmentRef(name), project, at_us)

    def compile_audience(self, name: str, project: SegmentProject, at_us: int) -> exp.Select:
        """Query of `profile_id` of an audience's members: its segment minus every exclusion.

        Holdout members are included (the holdout flag is applied outside SQL).
        """
        if name not in project.audiences:
            raise InputError(f"unknown audience {name!r}")
        return self.compile_condition(project.audiences[name].condition, project, at_us)

    def compile_members(
        self, project: SegmentProject, names: list[str], at_us: int
    ) -> MembersQuery:
        """One query of every live profile with one boolean column per segment in `names`.

        All segments share one scan of the events and compute each trait once.
        """
        query = QueryWalk(self, project, at_us)
        columns: list[exp.Expr] = [col("profile_id", "p")]
        names_to_columns: dict[str, str] = {}
        for i, name in enumerate(names):
            if name not in project.segments:
                raise InputError(f"unknown segment {name!r}")
            column = f"s{i}"
            columns.append(exp.alias_(query.condition(SegmentRef(name), ()), column, copy=False))
            names_to_columns[name] = column
        return MembersQuery(query.select(columns, None), names_to_columns)

    def compile_trait(self, trait: ComputedTrait, at_us: int) -> exp.Select:
        """Query of `(profile_id, value)` (value as JSON, NULL when none) for every live profile."""
        query = QueryWalk(self, None, at_us)
        value, kind = query.trait_value(trait)
        out = value if kind == KIND_JSON else self.to_json(value)
        json_value = exp.alias_(exp.cast(out, sql_type("JSON"), copy=False), "value", copy=False)
        return query.select([col("profile_id", "p"), json_value], None)

    # -- computed traits read on their own (first, last, most_frequent, after windows) ----------
    def _trait_rows(self, trait: ComputedTrait, at_us: int) -> exp.Select:
        """Query of `(profile_id, v)` for profiles with a value: v the raw aggregate."""
        events = self._events(trait.event, trait.where, trait.window, at_us)
        agg = trait.aggregation
        doc = col("properties", "e")
        path = self.json_path(trait.prop.split(".")) if trait.prop else None
        if path is not None:
            events = events.where(self._present(doc, path), append=True, copy=False)
        elif agg != "count":
            raise InputError(f"trait {trait.name!r}: {agg} needs a property")
        pid = col("canonical_profile_id", "e")
        value: exp.Expr
        if agg in ("count", "distinct_count", "sum", "avg", "min", "max"):
            if agg == "count":
                value = exp.Count(this=exp.Star())
            elif agg == "distinct_count":
                assert path is not None
                value = exp.Count(this=exp.Distinct(expressions=[self._serialised(doc, path)]))
            else:
                assert path is not None
                numeric = exp.In(
                    this=self.json_type(doc, path),
                    expressions=[exp.Literal.string(t) for t in NUMERIC_TYPES],
                )
                events = events.where(numeric, append=True, copy=False)
                number = exp.TryCast(this=self.json_text(doc, path), to=sql_type("DOUBLE"))
                func = {"sum": exp.Sum, "avg": exp.Avg, "min": exp.Min, "max": exp.Max}[agg]
                value = func(this=number)
            agg_q = events.select(
                exp.alias_(pid, "profile_id", copy=False),
                exp.alias_(value, "v", copy=False),
                append=False,
                copy=False,
            ).group_by(pid.copy(), copy=False)
        elif agg in ("first", "last"):
            assert path is not None
            desc = agg == "last"
            order = exp.Order(
                expressions=[
                    exp.Ordered(this=col(TS, "e"), desc=desc),
                    exp.Ordered(this=self.text_order(col("message_id", "e")), desc=desc),
                ]
            )
            rank = exp.Window(this=exp.RowNumber(), partition_by=[pid.copy()], order=order)
            ranked = events.select(
                exp.alias_(pid, "profile_id", copy=False),
                exp.alias_(self.json_value(doc, path), "v", copy=False),
                exp.alias_(rank, "rk", copy=False),
                append=False,
                copy=False,
            ).subquery("r", copy=False)
            agg_q = (
                exp.select(col("profile_id"), col("v"), copy=False)
                .from_(ranked, copy=False)
                .where(exp.EQ(this=col("rk"), expression=exp.Literal.number(1)), copy=False)
            )
        elif agg == "most_frequent":
            assert path is not None
            # Count each JSON value (5 and "5" differ), then rank them per profile.
            raw = exp.cast(self.json_value(doc, path), sql_type("VARCHAR"), copy=False)
            grouped = events.select(
                exp.alias_(pid, "profile_id", copy=False),
                exp.alias_(raw, "vj", copy=False),
                exp.alias_(exp.Count(this=exp.Star()), "n", copy=False),
                append=False,
                copy=False,
            ).group_by(pid.copy(), raw.copy(), copy=False)
            value = exp.cast(col("vj"), sql_type("JSON"), copy=False)
            keys = [exp.Ordered(this=col("n"), desc=True)]
            keys += [exp.Ordered(this=k, desc=False) for k in self._tie_keys(value)]
            rank = exp.Window(
                this=exp.RowNumber(),
                partition_by=[col("profile_id")],
                order=exp.Order(expressions=keys),
            )
            by_count = exp.select(
                col("profile_id"),
                exp.alias_(value.copy(), "v", copy=False),
                exp.alias_(rank, "rk", copy=False),
                copy=False,
            ).from_(grouped.subquery("g", copy=False), copy=False)
            agg_q = (
                exp.select(col("profile_id"), col("v"), copy=False)
                .from_(by_count.subquery("r", copy=False), copy=False)
                .where(exp.EQ(this=col("rk"), expression=exp.Literal.number(1)), copy=False)
            )
        else:
            raise InputError(f"unknown aggregation {agg!r}")
        return agg_q


def with_summaries(
    compiler: Compiler, store: Store, project: SegmentProject, at_us: int
) -> Compiler:
    """`compiler` reading a store's per-profile summaries where they are exact as of `at_us`;
    a back end that cannot read them, or a store without summaries, leaves it unchanged.

    The store is first asked to summarise the properties the project's whole-history traits
    read (filled from the event log the first time a project reads one).
    """
    if not compiler.reads_summaries or compiler.summaries is not None:
        return compiler
    wanted = summarised_needs(project, lambda parts: compiler.json_path(parts).name)
    coverage = store.summary_coverage(wanted, at_us)
    if coverage is None:
        return compiler
    return type(compiler)(summaries=SummaryCoverage.of(*coverage))
