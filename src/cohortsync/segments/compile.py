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
from typing import Any

from sqlglot import exp

from cohortsync.errors import InputError
from cohortsync.moments import to_datetime
from cohortsync.segments.anchor import output_columns, rejects_nulls
from cohortsync.segments.ast import (
    All,
    AnyOf,
    Before,
    Between,
    Comparison,
    ComputedTrait,
    Condition,
    EventCondition,
    Ever,
    HasIdentifier,
    Not,
    SegmentProject,
    SegmentRef,
    Since,
    TraitCondition,
    Window,
    Within,
)
from cohortsync.segments.scan import MERGE_RECENT, EventScan, Span, sql_type, table_ref
from cohortsync.segments.summary import (
    SummaryCoverage,
    SummaryScan,
    summarisable,
    summarised_needs,
)
from cohortsync.store.base import Store

NUMERIC_TYPES = ("BIGINT", "UBIGINT", "DOUBLE", "HUGEINT")
COUNT_OPS = {
    "eq": exp.EQ,
    "ne": exp.NEQ,
    "gt": exp.GT,
    "gte": exp.GTE,
    "lt": exp.LT,
    "lte": exp.LTE,
}

TS = "timestamp"


def _col(name: str, table: str | None = None) -> exp.Column:
    """A quoted column reference."""
    return exp.column(name, table=table, quoted=True)


def _lit(value: Any) -> exp.Expr:
    """A bound literal for a YAML value."""
    return exp.convert(value)


def _and(*conds: exp.Expr) -> exp.Expr:
    """Conjunction of conditions (TRUE when empty)."""
    return exp.and_(*conds, copy=False) if conds else exp.true()


def _or(*conds: exp.Expr) -> exp.Expr:
    """Disjunction of conditions (FALSE when empty)."""
    return exp.or_(*conds, copy=False) if conds else exp.false()


def _false_if_null(pred: exp.Expr) -> exp.Expr:
    """`COALESCE(pred, FALSE)`: a predicate that is never NULL, so NOT stays exact."""
    return exp.Coalesce(this=pred, expressions=[exp.false()])


def _one_of(value: exp.Expr, literals: list[Any]) -> exp.Expr:
    """`value = lit` for one literal, `value IN (...)` for several."""
    if len(literals) == 1:
        return exp.EQ(this=value, expression=_lit(literals[0]))
    return exp.In(this=value, expressions=[_lit(v) for v in literals])


def _plain(text: str) -> bool:
    """Whether a string serialises as JSON without escapes (`"` + text + `"`)."""
    return not any(c in '"\\' or c < " " for c in text)


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


def window_span(window: Window, at_us: int) -> Span:
    """The inclusive timestamp bounds (µs) of a window as of `at_us` (Since: up to `at_us`)."""
    if isinstance(window, Ever | Since):
        return Span(None, at_us)
    if isinstance(window, Within):
        return Span(at_us - window.duration.micros + 1, at_us)
    if isinstance(window, Between):
        return Span(at_us - window.older.micros, min(at_us, at_us - window.newer.micros))
    if isinstance(window, Before):
        return Span(None, min(at_us, at_us - window.duration.micros - 1))
    raise InputError(f"unknown window {window!r}")


@dataclass(frozen=True)
class MembersQuery:
    """One query of every live profile with a boolean column per segment (`columns[name]`)."""

    query: exp.Select
    columns: dict[str, str]


class Compiler:
    """Builds sqlglot queries for segments and traits; `dialect` picks SQL and JSON functions."""

    dialect = "duckdb"
    summaries: SummaryCoverage | None = None
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

    def _window(self, window: Window, at_us: int, table: str) -> list[exp.Expr]:
        """Timestamp predicates for a window (Since adds its anchor join elsewhere)."""
        span = window_span(window, at_us)
        preds: list[exp.Expr] = []
        if span.lo is not None:
            preds.append(exp.GTE(this=_col(TS, table), expression=self._at(span.lo)))
        preds.append(exp.LTE(this=_col(TS, table), expression=self._at(span.hi)))
        return preds

    def _anchor(self, event: str, at_us: int) -> exp.Select:
        """Per profile, the latest `event` at or before `at` (for Since windows)."""
        return (
            exp.select(
                exp.alias_(_col("canonical_profile_id"), "profile_id", copy=False),
                exp.alias_(exp.Max(this=_col(TS)), "anchor_ts", copy=False),
                copy=False,
            )
            .from_(table_ref("profile_events"), copy=False)
            .where(
                _and(
                    exp.EQ(this=_col("event_key"), expression=exp.Literal.string(event)),
                    exp.LTE(this=_col(TS), expression=self._at(at_us)),
                ),
                copy=False,
            )
            .group_by(_col("canonical_profile_id"), copy=False)
        )

    def _events(
        self, event: str, where: tuple[Comparison, ...], window: Window, at_us: int
    ) -> exp.Select:
        """Matching events `e` (columns profile_id, ts, message_id, properties) of one scan."""
        preds: list[exp.Expr] = [
            exp.EQ(this=_col("event_key", "e"), expression=exp.Literal.string(event)),
            *self._window(window, at_us, "e"),
        ]
        doc = _col("properties", "e")
        preds += [self._compare(doc, c.field.split("."), c.op, c.value) for c in where]
        query = exp.select(
            exp.alias_(_col("canonical_profile_id", "e"), "profile_id", copy=False),
            _col(TS, "e"),
            _col("message_id", "e"),
            _col("properties", "e"),
            copy=False,
        ).from_(exp.alias_(table_ref("profile_events"), "e", table=True, copy=False), copy=False)
        if isinstance(window, Since):
            anchor = self._anchor(window.event, at_us).subquery("a", copy=False)
            on = _and(
                exp.EQ(this=_col("profile_id", "a"), expression=_col("canonical_profile_id", "e")),
                exp.GT(this=_col(TS, "e"), expression=_col("anchor_ts", "a")),
            )
            query = query.join(anchor, on=on, copy=False)
        return query.where(_and(*preds), copy=False)

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
        return _false_if_null(exp.NEQ(this=kind, expression=exp.Literal.string("NULL")))

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
            preds.append(_one_of(self._serialised(doc, path), list(dict.fromkeys(texts))))
        if numbers:
            preds.append(_one_of(self._number(doc, path), list(dict.fromkeys(numbers))))
        if strings:
            text = self.json_text(doc, path)
            found = _one_of(text, list(dict.fromkeys(strings)))
            preds.append(_and(self._is_string(doc, path), found))
        return _false_if_null(_or(*preds)) if preds else exp.false()

    def _compare_number(self, value: exp.Expr, parts: list[str], op: str, lit: Any) -> exp.Expr:
        """`trait OP lit` for a SQL number (NULL: missing), with `_compare`'s rules; never NULL."""
        present: exp.Expr = exp.not_(exp.Is(this=value, expression=exp.null()), copy=False)
        if parts:
            present = exp.false()  # a number has no keys to look into
        if op == "exists":
            return present if lit else exp.not_(present, copy=False)
        if op in ("in", "not_in"):
            lits = lit if isinstance(lit, list | tuple) else [lit]
            positive = _or(*(self._compare_number(value, parts, "eq", v) for v in lits))
        elif op == "ne":
            positive = self._compare_number(value, parts, "eq", lit)
        else:
            positive = exp.false()
        if op in ("ne", "not_in"):
            return _and(present, exp.not_(positive, copy=False))
        if op == "in":
            return positive
        if op == "contains" or isinstance(lit, bool) or not isinstance(lit, int | float):
            return exp.false()
        if op not in COUNT_OPS:
            raise InputError(f"unknown operator {op!r}")
        return exp.paren(
            _and(present, COUNT_OPS[op](this=value.copy(), expression=_lit(lit))), copy=False
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
            return _and(self._present(doc, path), exp.not_(positive, copy=False))
        if op not in ("contains", *COUNT_OPS):
            raise InputError(f"unknown operator {op!r}")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return exp.false()  # booleans only compare with eq; null and lists never
        if op == "contains":
            if not isinstance(value, str):
                return exp.false()
            position = exp.StrPosition(this=self.json_text(doc, path), substr=_lit(value))
            found = exp.GT(this=position, expression=exp.Literal.number(0))
            return _false_if_null(_and(self._is_string(doc, path), found))
        if isinstance(value, str):
            compared = COUNT_OPS[op](this=self.json_text(doc, path), expression=_lit(value))
            return _false_if_null(_and(self._is_string(doc, path), compared))
        return _false_if_null(COUNT_OPS[op](this=self._number(doc, path), expression=_lit(value)))

    # -- public entry points ----------------------------------------------------------------
    def compile_condition(
        self, condition: Condition, project: SegmentProject, at_us: int
    ) -> exp.Select:
        """Query of `profile_id` for every live profile satisfying `condition` as of `at_us`."""
        query = _Query(self, project, at_us)
        return query.select([_col("profile_id", "p")], query.condition(condition, ()))

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
        query = _Query(self, project, at_us)
        columns: list[exp.Expr] = [_col("profile_id", "p")]
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
        query = _Query(self, None, at_us)
        value, kind = query.trait_value(trait)
        out = value if kind == _JSON else self.to_json(value)
        json_value = exp.alias_(exp.cast(out, sql_type("JSON"), copy=False), "value", copy=False)
        return query.select([_col("profile_id", "p"), json_value], None)

    # -- computed traits read on their own (first, last, most_frequent, since windows) ----------
    def _trait_rows(self, trait: ComputedTrait, at_us: int) -> exp.Select:
        """Query of `(profile_id, v)` for profiles with a value: v the raw aggregate."""
        events = self._events(trait.event, trait.where, trait.window, at_us)
        agg = trait.aggregation
        doc = _col("properties", "e")
        path = self.json_path(trait.prop.split(".")) if trait.prop else None
        if path is not None:
            events = events.where(self._present(doc, path), append=True, copy=False)
        elif agg != "count":
            raise InputError(f"trait {trait.name!r}: {agg} needs a property")
        pid = _col("canonical_profile_id", "e")
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
                    exp.Ordered(this=_col(TS, "e"), desc=desc),
                    exp.Ordered(this=self.text_order(_col("message_id", "e")), desc=desc),
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
                exp.select(_col("profile_id"), _col("v"), copy=False)
                .from_(ranked, copy=False)
                .where(exp.EQ(this=_col("rk"), expression=exp.Literal.number(1)), copy=False)
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
            value = exp.cast(_col("vj"), sql_type("JSON"), copy=False)
            keys = [exp.Ordered(this=_col("n"), desc=True)]
            keys += [exp.Ordered(this=k, desc=False) for k in self._tie_keys(value)]
            rank = exp.Window(
                this=exp.RowNumber(),
                partition_by=[_col("profile_id")],
                order=exp.Order(expressions=keys),
            )
            by_count = exp.select(
                _col("profile_id"),
                exp.alias_(value.copy(), "v", copy=False),
                exp.alias_(rank, "rk", copy=False),
                copy=False,
            ).from_(grouped.subquery("g", copy=False), copy=False)
            agg_q = (
                exp.select(_col("profile_id"), _col("v"), copy=False)
                .from_(by_count.subquery("r", copy=False), copy=False)
                .where(exp.EQ(this=_col("rk"), expression=exp.Literal.number(1)), copy=False)
            )
        else:
            raise InputError(f"unknown aggregation {agg!r}")
        return agg_q


_JSON = "json"
_NUMBER = "number"


def _starting_read(reads: list[exp.Subquery], where: exp.Expr | None) -> exp.Subquery | None:
    """The first of `reads` without whose row `where` never holds: the query's start."""
    if where is None:
        return None
    for read in reads:
        if rejects_nulls(where, output_columns(read)):
            return read
    return None


class _Query:
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
                placeholder = _col(f"l{len(self._either)}")
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
            start.this.select(exp.alias_(_col("pid"), "profile_id", copy=False), copy=False)
            base = start.this.subquery("p", copy=False)
        query = exp.select(*columns, copy=False).from_(base, copy=False)
        pid = _col("profile_id", "p")
        for read in reads:
            on = exp.EQ(this=_col("pid", read.alias), expression=pid.copy())
            query = query.join(read, on=on, join_type="left", copy=False)
        for sub, alias in self._joins:
            on = exp.EQ(this=_col("profile_id", alias), expression=pid.copy())
            query = query.join(sub, on=on, join_type="left", copy=False)
        if start is not None:
            assert where is not None
            return query.where(where, copy=False)
        live = exp.Is(this=_col("merged_into", "p"), expression=exp.null())
        return query.where(live if where is None else _and(live, where), copy=False)

    # -- conditions -------------------------------------------------------------------------
    def condition(self, cond: Condition, stack: tuple[str, ...]) -> exp.Expr:
        """A boolean expression (never NULL) over the query's columns for `cond`."""
        if isinstance(cond, EventCondition):
            return self._event(cond)
        if isinstance(cond, TraitCondition):
            return self._trait_condition(cond)
        if isinstance(cond, HasIdentifier):
            holders = (
                exp.select(_col("profile_id"), copy=False)
                .from_(table_ref("identities"), copy=False)
                .where(
                    exp.EQ(this=_col("kind"), expression=exp.Literal.string(cond.kind)), copy=False
                )
            )
            return exp.In(this=_col("profile_id", "p"), query=holders.subquery(copy=False))
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
        lapsed pattern) read as one test of its latest timestamp (`_last_between`)."""
        pairs: dict[int, int] = {}  # index of the window -> index of the gap closing it
        for i, cond in enumerate(conds):
            for j, gap in enumerate(conds):
                if i not in pairs and j not in pairs.values() and _closes(cond, gap):
                    pairs[i] = j
        gaps = set(pairs.values())
        out: list[exp.Expr] = []
        for i, cond in enumerate(conds):
            if i in pairs:
                gap = conds[pairs[i]]
                assert isinstance(cond, EventCondition) and isinstance(gap, Not)
                assert isinstance(gap.condition, EventCondition)
                out.append(self._last_between(cond, gap.condition))
            elif i not in gaps:
                out.append(self.condition(cond, stack))
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
        return _false_if_null(inside)  # read from the summaries, the latest may be before lo

    def _segment(self, name: str, stack: tuple[str, ...]) -> exp.Expr:
        """A referenced segment's expression (built once per query, then shared)."""
        if name in stack:
            raise InputError(f"segment {name!r} refers to itself")
        assert self.project is not None
        if name not in self.project.segments:
            raise InputError(f"unknown segment {name!r}")
        built = self._segments.get(name)
        if built is None:
            inner = self.condition(self.project.segments[name].condition, (*stack, name))
            built = self._segments[name] = exp.paren(inner, copy=False)
        return built

    def _where(self, event: str, where: tuple[Comparison, ...]) -> str | None:
        """The scan column of `where` on `event` rows (None when there is no filter)."""
        if not where:
            return None
        doc = _col("properties")
        preds = (self.c._compare(doc, w.field.split("."), w.op, w.value) for w in where)
        return self.scan.derive(event, ("where", repr(where)), _and(*preds), "BOOLEAN")

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
        if not _same_for_any(op, count):
            if isinstance(window, Since):
                counted = self._since_count(cond)
                return _and(
                    self._anchored(window), COUNT_OPS[op](this=counted, expression=_lit(count))
                )
            n = self._per_event("count", cond.event, span, where)
            zero = exp.Coalesce(this=n, expressions=[exp.Literal.number(0)])
            return COUNT_OPS[op](this=zero, expression=_lit(count))
        if at_zero == at_one:  # the count does not matter
            if isinstance(window, Since):
                return self._anchored(window) if at_zero else exp.false()
            return exp.true() if at_zero else exp.false()
        found: exp.Expr
        if isinstance(window, Since):
            latest = self._per_event("latest", cond.event, span, where)
            anchor = self._per_event("latest", window.event, span, None)
            found = _false_if_null(exp.GT(this=latest, expression=anchor))
            # Without the anchor event the condition is false, whatever the count.
            return found if at_one else _and(self._anchored(window), exp.not_(found, copy=False))
        if isinstance(window, Between):
            n = self._per_event("count", cond.event, span, where)
            found = exp.GTE(
                this=exp.Coalesce(this=n, expressions=[exp.Literal.number(0)]),
                expression=exp.Literal.number(1),
            )
        elif isinstance(window, Before):
            earliest = self._per_event("earliest", cond.event, span, where)
            found = _false_if_null(exp.LTE(this=earliest, expression=self.c._at(span.hi)))
        else:
            latest = self._per_event("latest", cond.event, span, where)
            if span.lo is None:
                found = exp.not_(exp.Is(this=latest, expression=exp.null()), copy=False)
            else:
                found = _false_if_null(exp.GTE(this=latest, expression=self.c._at(span.lo)))
        return found if at_one else exp.not_(found, copy=False)

    def _anchored(self, window: Since) -> exp.Expr:
        """The profile has the `since` anchor event (at or before the instant)."""
        anchor = self._per_event("latest", window.event, Span(None, self.at), None)
        return exp.not_(exp.Is(this=anchor, expression=exp.null()), copy=False)

    def _since_count(self, cond: EventCondition) -> exp.Expr:
        """The number of matching events after the anchor (0 when none), read on its own."""
        events = self.c._events(cond.event, cond.where, cond.window, self.at)
        pid = _col("canonical_profile_id", "e")
        counts = events.select(
            exp.alias_(pid, "profile_id", copy=False),
            exp.alias_(exp.Count(this=exp.Star()), "n", copy=False),
            append=False,
            copy=False,
        ).group_by(pid.copy(), copy=False)
        alias = self._join(counts, "n")
        return exp.Coalesce(this=_col("n", alias), expressions=[exp.Literal.number(0)])

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
            value, kind = self._identify_trait(name), _JSON
        if kind == _JSON:
            return self.c._compare(value, parts, comp.op, comp.value)
        return self.c._compare_number(value, parts, comp.op, comp.value)

    def _identify_trait(self, name: str) -> exp.Expr:
        """The JSON value of an identify trait (NULL when the profile has none)."""
        if name not in self._identify:
            rows = (
                exp.select(_col("profile_id"), _col("value"), copy=False)
                .from_(table_ref("profile_traits"), copy=False)
                .where(exp.EQ(this=_col("name"), expression=exp.Literal.string(name)), copy=False)
            )
            self._identify[name] = _col("value", self._join(rows, "t"))
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
        own_rows = agg in ("first", "last", "distinct_count") or isinstance(trait.window, Since)
        if agg == "most_frequent" and not self.scan.can_pick_most_frequent:
            own_rows = True
        if self.summary is not None and self._summarised(trait):
            if prop is None:
                value = self.summary.event("count", event)
            else:
                value = self.summary.prop(agg, event, prop)
        elif own_rows:
            value = _col("v", self._join(self.c._trait_rows(trait, self.at), "x"))
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
            return exp.Coalesce(this=value, expressions=[exp.Literal.number(0)]), _NUMBER
        if agg in ("sum", "avg", "min", "max"):
            return value, _NUMBER
        return value, _JSON

    def _json_column(self, event: str, prop: str) -> str:
        """Scan column: the property's JSON text on `event` rows (NULL when missing or null)."""
        text = self.c._serialised(_col("properties"), self.c.json_path(prop.split(".")))
        value = exp.Nullif(this=text, expression=exp.Literal.string("null"))
        return self.scan.derive(event, ("json", prop), value, "VARCHAR")

    def _number_column(self, event: str, prop: str) -> str:
        """Scan column: the property as a DOUBLE on `event` rows when it is a JSON number."""
        number = self.c._number(_col("properties"), self.c.json_path(prop.split(".")))
        return self.scan.derive(event, ("number", prop), number, "DOUBLE")


class DuckDBCompiler(Compiler):
    """The DuckDB back end: JSON pointers with json_type / json_extract_string, and `arg_min`
    to pick most frequent values inside the shared scan."""

    dialect = "duckdb"

    def __init__(self, summaries: SummaryCoverage | None = None) -> None:
        """`summaries`: what the store's summaries answer exactly (None: read the log only)."""
        self.summaries = summaries

    def most_frequent_picker(self) -> Callable[[exp.Expr, exp.Expr], exp.Expr] | None:
        """`arg_min(value, (-count, tie keys...))` over the non-NULL values."""

        def pick(value: exp.Expr, count: exp.Expr) -> exp.Expr:
            key = exp.Tuple(expressions=[exp.Neg(this=count), *self._tie_keys(value)])
            present = exp.not_(exp.Is(this=value.copy(), expression=exp.null()), copy=False)
            best = exp.ArgMin(this=value.copy(), expression=key)
            return exp.Filter(this=best, expression=exp.Where(this=present))

        return pick


def with_summaries(
    compiler: Compiler, store: Store, project: SegmentProject, at_us: int
) -> Compiler:
    """The DuckDB compiler reading a store's per-profile summaries where they are exact as of
    `at_us`; any other compiler, or a store without summaries, unchanged.

    The store is first asked to summarise the properties the project's whole-history traits
    read (filled from the event log the first time a project reads one).
    """
    if type(compiler) is not DuckDBCompiler or compiler.summaries is not None:
        return compiler
    wanted = summarised_needs(project, lambda parts: compiler.json_path(parts).name)
    coverage = store.summary_coverage(wanted, at_us)
    return compiler if coverage is None else DuckDBCompiler(summaries=SummaryCoverage.of(*coverage))
