"""Compile segments and computed traits into SQL (sqlglot expressions) over the event store.

Every user value is bound as a sqlglot literal; no SQL is assembled from strings. Each query
returns only live profiles (`profiles.merged_into IS NULL`). A JSON null property is treated
as missing, like an absent key. Set operations keep the boolean algebra exact: `Not` is
"live profiles EXCEPT the condition", so SQL NULLs never leak into membership.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlglot import exp

from cohortsync.errors import InputError
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

NUMERIC_TYPES = ("BIGINT", "UBIGINT", "DOUBLE", "HUGEINT")
COUNT_OPS = {
    "eq": exp.EQ,
    "ne": exp.NEQ,
    "gt": exp.GT,
    "gte": exp.GTE,
    "lt": exp.LT,
    "lte": exp.LTE,
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TS = "timestamp"


def _col(name: str, table: str | None = None) -> exp.Column:
    """A quoted column reference."""
    return exp.column(name, table=table, quoted=True)


def _lit(value: Any) -> exp.Expr:
    """A bound literal for a YAML value."""
    return exp.convert(value)


def _and(*conds: exp.Expr) -> exp.Expr:
    """Conjunction of conditions (TRUE when empty)."""
    return exp.and_(*conds) if conds else exp.true()


def _or(*conds: exp.Expr) -> exp.Expr:
    """Disjunction of conditions (FALSE when empty)."""
    return exp.or_(*conds) if conds else exp.false()


def _count_holds_at_zero(op: str, n: int) -> bool:
    """Whether `0 OP n` is true, i.e. profiles without events satisfy the count."""
    return {"eq": n == 0, "ne": n != 0, "gt": n < 0, "gte": n <= 0, "lt": n > 0, "lte": n >= 0}[op]


class Compiler:
    """Builds sqlglot queries for segments and traits; `dialect` picks SQL and JSON functions."""

    dialect = "duckdb"

    def __init__(self) -> None:
        self._alias = 0

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

    def render(self, expr: exp.Expr) -> str:
        """The query as SQL text in this compiler's dialect."""
        return expr.sql(dialect=self.dialect, pretty=True)

    # -- helpers ---------------------------------------------------------------------------
    def _name(self, prefix: str) -> str:
        self._alias += 1
        return f"{prefix}{self._alias}"

    def _at(self, micros: int) -> exp.Expr:
        """A TIMESTAMPTZ literal for an instant in microseconds."""
        stamp = EPOCH + timedelta(microseconds=micros)
        text = stamp.strftime("%Y-%m-%d %H:%M:%S.%f") + "+00"
        return exp.cast(exp.Literal.string(text), exp.DataType.build("TIMESTAMPTZ"))

    def _live(self) -> exp.Select:
        """Every live profile."""
        return (
            exp.select(_col("profile_id"))
            .from_(exp.to_table("profiles"))
            .where(exp.Is(this=_col("merged_into"), expression=exp.null()))
        )

    def _window(self, window: Window, at_us: int, table: str) -> list[exp.Expr]:
        """Timestamp predicates for a window (Since adds its anchor join elsewhere)."""
        ts = _col(TS, table)
        at = exp.LTE(this=ts, expression=self._at(at_us))
        if isinstance(window, Ever | Since):
            return [at]
        if isinstance(window, Within):
            return [exp.GT(this=ts, expression=self._at(at_us - window.duration.micros)), at]
        if isinstance(window, Between):
            return [
                exp.GTE(this=ts, expression=self._at(at_us - window.older.micros)),
                exp.LTE(this=ts.copy(), expression=self._at(at_us - window.newer.micros)),
            ]
        if isinstance(window, Before):
            return [exp.LT(this=ts, expression=self._at(at_us - window.duration.micros))]
        raise InputError(f"unknown window {window!r}")

    def _anchor(self, event: str, at_us: int) -> exp.Select:
        """Per profile, the latest `event` at or before `at` (for Since windows)."""
        return (
            exp.select(
                exp.alias_(_col("canonical_profile_id"), "profile_id"),
                exp.alias_(exp.Max(this=_col(TS)), "anchor_ts"),
            )
            .from_(exp.to_table("profile_events"))
            .where(
                _and(
                    exp.EQ(this=_col("event_key"), expression=exp.Literal.string(event)),
                    exp.LTE(this=_col(TS), expression=self._at(at_us)),
                )
            )
            .group_by(_col("canonical_profile_id"))
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
            exp.alias_(_col("canonical_profile_id", "e"), "profile_id"),
            _col(TS, "e"),
            _col("message_id", "e"),
            _col("properties", "e"),
        ).from_(exp.alias_(exp.to_table("profile_events"), "e", table=True))
        if isinstance(window, Since):
            anchor = self._anchor(window.event, at_us).subquery("a")
            on = _and(
                exp.EQ(this=_col("profile_id", "a"), expression=_col("canonical_profile_id", "e")),
                exp.GT(this=_col(TS, "e"), expression=_col("anchor_ts", "a")),
            )
            query = query.join(anchor, on=on)
        return query.where(_and(*preds))

    # -- comparisons ----------------------------------------------------------------------
    def _present(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The value at path exists and is not JSON null."""
        kind = self.json_type(doc, path)
        return _and(
            exp.Not(this=exp.Is(this=kind, expression=exp.null())),
            exp.NEQ(this=kind.copy(), expression=exp.Literal.string("NULL")),
        )

    def _typed(self, doc: exp.Expr, path: exp.Expr, value: Any) -> tuple[exp.Expr, exp.Expr] | None:
        """(type check, comparable SQL value) for a literal's type, or None if incomparable."""
        kind = self.json_type(doc, path)
        text = self.json_text(doc, path)
        if isinstance(value, bool):
            check = exp.EQ(this=kind, expression=exp.Literal.string("BOOLEAN"))
            return check, exp.EQ(this=text, expression=exp.Literal.string(str(value).lower()))
        if isinstance(value, int | float):
            is_number = exp.In(
                this=kind, expressions=[exp.Literal.string(t) for t in NUMERIC_TYPES]
            )
            # TRY_CAST: the engine may evaluate the cast before (or without) the type check.
            return is_number, exp.TryCast(this=text, to=exp.DataType.build("DOUBLE"))
        if isinstance(value, str):
            return exp.EQ(this=kind, expression=exp.Literal.string("VARCHAR")), text
        return None

    def _compare(self, doc: exp.Expr, parts: list[str], op: str, value: Any) -> exp.Expr:
        """SQL predicate for `prop OP value` on a JSON document; never NULL."""
        path = self.json_path(parts)
        present = self._present(doc, path)
        if op == "exists":
            return present if value else exp.Not(this=exp.paren(present))
        if op == "in":
            values = value if isinstance(value, list | tuple) else [value]
            return _or(*(self._compare(doc, parts, "eq", v) for v in values))
        if op in ("ne", "not_in"):
            # The exact complements of eq / in over present values (see ast.py).
            positive = self._compare(doc, parts, "eq" if op == "ne" else "in", value)
            return _and(present, exp.Not(this=exp.paren(positive)))
        typed = self._typed(doc, path, value)
        if typed is None:
            return exp.false()
        check, lhs = typed
        if op == "contains":
            if not isinstance(value, str):
                return exp.false()
            found = exp.GT(
                this=exp.StrPosition(this=lhs, substr=exp.Literal.string(value)),
                expression=exp.Literal.number(0),
            )
            return exp.paren(_and(check, found))
        if isinstance(value, bool):
            if op != "eq":
                return exp.false()
            return exp.paren(_and(check, lhs))
        if op not in COUNT_OPS:
            raise InputError(f"unknown operator {op!r}")
        return exp.paren(_and(check, COUNT_OPS[op](this=lhs, expression=_lit(value))))

    # -- conditions -----------------------------------------------------------------------
    def compile_segment(self, name: str, project: SegmentProject, at_us: int) -> exp.Select:
        """Query of `profile_id` for every live profile in segment `name` as of `at_us`."""
        if name not in project.segments:
            raise InputError(f"unknown segment {name!r}")
        body = self._condition(project.segments[name].condition, project, at_us, (name,))
        live = self._live()
        return live.where(exp.In(this=_col("profile_id"), query=body.subquery()), append=True)

    def _wrap(self, query: exp.Expr) -> exp.Select:
        """`SELECT profile_id FROM (query)`: a plain select usable in set operations."""
        return exp.select(_col("profile_id")).from_(exp.paren(query).as_(self._name("c")))

    def _condition(
        self, cond: Condition, project: SegmentProject, at_us: int, stack: tuple[str, ...]
    ) -> exp.Query:
        """A query of profile_id (possibly including non-live ids) satisfying `cond`."""
        if isinstance(cond, EventCondition):
            return self._event_condition(cond, at_us)
        if isinstance(cond, TraitCondition):
            return self._trait_condition(cond, project, at_us)
        if isinstance(cond, HasIdentifier):
            return (
                exp.select(_col("profile_id"))
                .from_(exp.to_table("identities"))
                .where(exp.EQ(this=_col("kind"), expression=exp.Literal.string(cond.kind)))
            )
        if isinstance(cond, SegmentRef):
            if cond.name in stack:
                raise InputError(f"segment {cond.name!r} refers to itself")
            if cond.name not in project.segments:
                raise InputError(f"unknown segment {cond.name!r}")
            inner = project.segments[cond.name].condition
            return self._condition(inner, project, at_us, (*stack, cond.name))
        if isinstance(cond, All | AnyOf):
            parts = [self._wrap(self._condition(c, project, at_us, stack)) for c in cond.conditions]
            if not parts:
                return self._live() if isinstance(cond, All) else self._live().where(exp.false())
            result: exp.Query = parts[0]
            for part in parts[1:]:
                if isinstance(cond, All):
                    result = exp.intersect(result, part, distinct=True)
                else:
                    result = exp.union(result, part, distinct=True)
            return result
        if isinstance(cond, Not):
            inner_q = self._wrap(self._condition(cond.condition, project, at_us, stack))
            return exp.except_(self._live(), inner_q, distinct=True)
        raise InputError(f"unknown condition {cond!r}")

    def _event_condition(self, cond: EventCondition, at_us: int) -> exp.Select:
        """Profiles whose matching-event count satisfies `count_op count`."""
        if cond.count_op not in COUNT_OPS:
            raise InputError(f"unknown count operator {cond.count_op!r}")
        events = self._events(cond.event, cond.where, cond.window, at_us)
        op = COUNT_OPS[cond.count_op]
        if not _count_holds_at_zero(cond.count_op, cond.count):
            pid = exp.alias_(_col("canonical_profile_id", "e"), "profile_id")
            return (
                events.select(pid, append=False)
                .group_by(_col("canonical_profile_id", "e"))
                .having(op(this=exp.Count(this=exp.Star()), expression=_lit(cond.count)))
            )
        counts = (
            events.select(
                exp.alias_(_col("canonical_profile_id", "e"), "profile_id"),
                exp.alias_(exp.Count(this=exp.Star()), "n"),
                append=False,
            )
            .group_by(_col("canonical_profile_id", "e"))
            .subquery("m")
        )
        query = (
            exp.select(_col("profile_id", "p"))
            .from_(exp.alias_(exp.to_table("profiles"), "p", table=True))
            .join(
                counts,
                on=exp.EQ(this=_col("profile_id", "m"), expression=_col("profile_id", "p")),
                join_type="left",
            )
        )
        if isinstance(cond.window, Since):
            anchor = self._anchor(cond.window.event, at_us).subquery("a")
            query = query.join(
                anchor, on=exp.EQ(this=_col("profile_id", "a"), expression=_col("profile_id", "p"))
            )
        n = exp.Coalesce(this=_col("n", "m"), expressions=[exp.Literal.number(0)])
        return query.where(
            _and(
                exp.Is(this=_col("merged_into", "p"), expression=exp.null()),
                op(this=n, expression=_lit(cond.count)),
            )
        )

    def _trait_condition(
        self, cond: TraitCondition, project: SegmentProject, at_us: int
    ) -> exp.Select:
        """Profiles whose trait (computed first, else identify) satisfies the comparison."""
        comp = cond.comparison
        if comp.field in project.traits:
            source: exp.Expr = self.compile_trait(project.traits[comp.field], at_us)
            parts: list[str] = []
        else:
            name, *parts = comp.field.split(".")
            source = (
                exp.select(_col("profile_id"), _col("value"))
                .from_(exp.to_table("profile_traits"))
                .where(exp.EQ(this=_col("name"), expression=exp.Literal.string(name)))
            )
        pred = self._compare(_col("value", "t"), parts, comp.op, comp.value)
        return (
            exp.select(_col("profile_id", "p"))
            .from_(exp.alias_(exp.to_table("profiles"), "p", table=True))
            .join(
                exp.paren(source).as_("t"),
                on=exp.EQ(this=_col("profile_id", "t"), expression=_col("profile_id", "p")),
                join_type="left",
            )
            .where(_and(exp.Is(this=_col("merged_into", "p"), expression=exp.null()), pred))
        )

    # -- computed traits ------------------------------------------------------------------
    def compile_trait(self, trait: ComputedTrait, at_us: int) -> exp.Select:
        """Query of `(profile_id, value)` (value as JSON, NULL when none) for every live profile."""
        events = self._events(trait.event, trait.where, trait.window, at_us)
        agg = trait.aggregation
        doc = _col("properties", "e")
        path = self.json_path(trait.prop.split(".")) if trait.prop else None
        if path is not None:
            events = events.where(self._present(doc, path), append=True)
        elif agg != "count":
            raise InputError(f"trait {trait.name!r}: {agg} needs a property")
        pid = _col("canonical_profile_id", "e")
        value: exp.Expr
        if agg in ("count", "distinct_count", "sum", "avg", "min", "max"):
            if agg == "count":
                value = exp.Count(this=exp.Star())
            elif agg == "distinct_count":
                assert path is not None
                value = exp.Count(this=exp.Distinct(expressions=[self.json_value(doc, path)]))
            else:
                assert path is not None
                numeric = exp.In(
                    this=self.json_type(doc, path),
                    expressions=[exp.Literal.string(t) for t in NUMERIC_TYPES],
                )
                events = events.where(numeric, append=True)
                number = exp.TryCast(
                    this=self.json_text(doc, path), to=exp.DataType.build("DOUBLE")
                )
                func = {"sum": exp.Sum, "avg": exp.Avg, "min": exp.Min, "max": exp.Max}[agg]
                value = func(this=number)
            agg_q = events.select(
                exp.alias_(pid, "profile_id"), exp.alias_(value, "v"), append=False
            ).group_by(pid.copy())
        elif agg in ("first", "last"):
            assert path is not None
            desc = agg == "last"
            order = exp.Order(
                expressions=[
                    exp.Ordered(this=_col(TS, "e"), desc=desc),
                    exp.Ordered(this=_col("message_id", "e"), desc=desc),
                ]
            )
            rank = exp.Window(this=exp.RowNumber(), partition_by=[pid.copy()], order=order)
            ranked = events.select(
                exp.alias_(pid, "profile_id"),
                exp.alias_(self.json_value(doc, path), "v"),
                exp.alias_(rank, "rk"),
                append=False,
            ).subquery("r")
            agg_q = (
                exp.select(_col("profile_id"), _col("v"))
                .from_(ranked)
                .where(exp.EQ(this=_col("rk"), expression=exp.Literal.number(1)))
            )
        elif agg == "most_frequent":
            assert path is not None
            # Group by the JSON value (5 and "5" differ); ties: numbers by value, then
            # strings, then booleans, then anything else, each by text, then JSON text.
            value_j = self.json_value(doc, path)
            kind = self.json_type(doc, path)
            numeric = exp.In(this=kind, expressions=[exp.Literal.string(t) for t in NUMERIC_TYPES])
            type_rank = exp.Case(
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
            as_number = exp.Case(
                ifs=[
                    exp.If(
                        this=numeric.copy(),
                        true=exp.TryCast(
                            this=self.json_text(doc, path), to=exp.DataType.build("DOUBLE")
                        ),
                    )
                ],
                default=exp.Literal.number(0),
            )
            text = exp.Case(
                ifs=[exp.If(this=numeric.copy(), true=exp.Literal.string(""))],
                default=self.json_text(doc, path),
            )
            raw = exp.cast(value_j.copy(), exp.DataType.build("VARCHAR"))
            grouped = events.select(
                exp.alias_(pid, "profile_id"),
                exp.alias_(exp.Min(this=value_j), "v"),
                exp.alias_(exp.Min(this=type_rank), "vr"),
                exp.alias_(exp.Min(this=as_number), "vn"),
                exp.alias_(exp.Min(this=text), "vt"),
                exp.alias_(raw, "vj"),
                exp.alias_(exp.Count(this=exp.Star()), "n"),
                append=False,
            ).group_by(pid.copy(), raw.copy())
            order = exp.Order(
                expressions=[
                    exp.Ordered(this=_col("n"), desc=True),
                    exp.Ordered(this=_col("vr"), desc=False),
                    exp.Ordered(this=_col("vn"), desc=False),
                    exp.Ordered(this=_col("vt"), desc=False),
                    exp.Ordered(this=_col("vj"), desc=False),
                ]
            )
            rank = exp.Window(this=exp.RowNumber(), partition_by=[_col("profile_id")], order=order)
            by_count = exp.select(_col("profile_id"), _col("v"), exp.alias_(rank, "rk")).from_(
                grouped.subquery("g")
            )
            agg_q = (
                exp.select(_col("profile_id"), _col("v"))
                .from_(by_count.subquery("r"))
                .where(exp.EQ(this=_col("rk"), expression=exp.Literal.number(1)))
            )
        else:
            raise InputError(f"unknown aggregation {agg!r}")
        out: exp.Expr = _col("v", "x")
        if agg in ("count", "distinct_count"):
            out = exp.Coalesce(this=out, expressions=[exp.Literal.number(0)])
        if agg not in ("first", "last", "most_frequent"):
            out = self.to_json(out)
        out = exp.cast(out, exp.DataType.build("JSON"))
        return (
            exp.select(_col("profile_id", "p"), exp.alias_(out, "value"))
            .from_(exp.alias_(exp.to_table("profiles"), "p", table=True))
            .join(
                agg_q.subquery("x"),
                on=exp.EQ(this=_col("profile_id", "x"), expression=_col("profile_id", "p")),
                join_type="left",
            )
            .where(exp.Is(this=_col("merged_into", "p"), expression=exp.null()))
        )


class DuckDBCompiler(Compiler):
    """The DuckDB back end: JSON pointers with json_type / json_extract_string."""

    dialect = "duckdb"
