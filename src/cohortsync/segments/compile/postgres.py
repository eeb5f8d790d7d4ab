"""The Postgres back end of the segment compiler.

Postgres keeps properties and traits as JSONB: a path is a `text[]` (`doc #> ARRAY['meta',
'channel']`), types come from `jsonb_typeof`, and a value is a number only when its JSON type
says so (there is no TRY_CAST, so every cast sits behind a CASE on the type). Text is compared
and ordered with `COLLATE "C"`, by code point as the Python evaluator does, whatever the
database's locale. Postgres has no `arg_min`, so `most_frequent` uses the compiler's
window-ranked form. JSON values are JSONB throughout (the `JSON` type renders as JSONB), so
`5` and `5.0` stay two values where a JSON value's text is what tells them apart.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres

from cohortsync.segments.ast import ComputedTrait
from cohortsync.segments.compile.compiler import Compiler
from cohortsync.segments.compile.terms import TS
from cohortsync.segments.scan import col, sql_type

# jsonb_typeof names as the base compiler's type checks spell them (DuckDB's json_type).
_TYPE_NAMES = {
    "number": "DOUBLE",
    "string": "VARCHAR",
    "boolean": "BOOLEAN",
    "null": "NULL",
    "object": "OBJECT",
    "array": "ARRAY",
}
_ROOT = "{}"  # the empty text[] path: the document itself


class CohortsyncPostgres(Postgres):
    """Postgres as the compiler writes it: the `JSON` type is JSONB (what the store holds)."""

    class Generator(Postgres.Generator):  # type: ignore[valid-type,misc]
        """Postgres SQL with JSON rendered as JSONB."""

        TYPE_MAPPING: ClassVar[dict[Any, str]] = {
            **Postgres.Generator.TYPE_MAPPING,
            exp.DataType.Type.JSON: "JSONB",
        }


def _code_point(text: exp.Expr) -> exp.Expr:
    """`((text) COLLATE "C")`: compared and sorted by code point (parenthesised, as some
    places, such as POSITION's arguments, take no COLLATE clause)."""
    collated = exp.Collate(
        this=exp.paren(text, copy=False), expression=exp.to_identifier("C", quoted=True)
    )
    return exp.paren(collated, copy=False)


def _string(value: str) -> exp.Literal:
    return exp.Literal.string(value)


class PostgresCompiler(Compiler):
    """The Postgres back end: JSONB paths and `jsonb_typeof`, code-point text order, and the
    window-ranked `most_frequent` (no `arg_min`)."""

    dialect = "postgres"

    # -- dialect hooks -------------------------------------------------------------------
    def json_path(self, parts: list[str]) -> exp.Expr:
        """`ARRAY['a', 'b']` for `a.b` (keys bound as literals, no escaping needed)."""
        if not parts:
            return _string(_ROOT)
        return exp.Array(expressions=[_string(p) for p in parts])

    def _at_path(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The JSONB value at `path` (NULL when absent); the document itself at the root."""
        if isinstance(path, exp.Literal) and path.this == _ROOT:
            return doc
        return exp.JSONBExtract(this=doc, expression=path)

    def _typeof(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """`jsonb_typeof` of the value at path: number, string, boolean, null, object, array."""
        return exp.Anonymous(this="jsonb_typeof", expressions=[self._at_path(doc, path)])

    def json_type(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The JSON type at path under the names the shared code compares with (DOUBLE, …)."""
        names = [exp.If(this=_string(pg), true=_string(duck)) for pg, duck in _TYPE_NAMES.items()]
        return exp.Case(this=self._typeof(doc, path), ifs=names)

    def json_text(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The value at path as text (strings unquoted), compared by code point."""
        return _code_point(exp.JSONBExtractScalar(this=doc, expression=path))

    def json_value(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The JSONB value at path."""
        return self._at_path(doc, path)

    def to_json(self, value: exp.Expr) -> exp.Expr:
        """A SQL value as JSONB."""
        return exp.Anonymous(this="to_jsonb", expressions=[value])

    def text_order(self, text: exp.Expr) -> exp.Expr:
        """Text sorted by code point, not by the database's locale."""
        return _code_point(text)

    def render(self, expr: exp.Expr, pretty: bool = False) -> str:
        """The query as Postgres SQL (JSON as JSONB); the tree is read, never changed."""
        return expr.sql(dialect=CohortsyncPostgres, pretty=pretty, copy=False)

    # -- comparisons -----------------------------------------------------------------------
    def _number(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The value at path as DOUBLE PRECISION when it is a JSON number, else NULL."""
        is_number = exp.EQ(this=self._typeof(doc, path), expression=_string("number"))
        value = exp.cast(self._at_path(doc.copy(), path.copy()), sql_type("DOUBLE"), copy=False)
        return exp.Case(ifs=[exp.If(this=is_number, true=value)])

    def _present(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The value at path exists and is not JSON null; never NULL."""
        kind = exp.NEQ(this=self._typeof(doc, path), expression=_string("null"))
        return exp.Coalesce(this=kind, expressions=[exp.false()])

    def _is_string(self, doc: exp.Expr, path: exp.Expr) -> exp.Expr:
        """The value at path is a JSON string (NULL when absent)."""
        return exp.EQ(this=self._typeof(doc, path), expression=_string("string"))

    def _tie_keys(self, value: exp.Expr) -> list[exp.Expr]:
        """most_frequent's tie order of a JSONB value: type rank, number, text, JSON text."""
        root = _string(_ROOT)
        kind = self._typeof(value, root)

        def when(name: str, then: exp.Expr) -> exp.If:
            return exp.If(this=exp.EQ(this=kind.copy(), expression=_string(name)), true=then)

        ranks = ("number", "string", "boolean")
        rank = exp.Case(
            ifs=[when(name, exp.Literal.number(i)) for i, name in enumerate(ranks)],
            default=exp.Literal.number(len(ranks)),
        )
        number = exp.Case(
            ifs=[when("number", exp.cast(value.copy(), sql_type("DOUBLE"), copy=False))],
            default=exp.Literal.number(0),
        )
        serialised = exp.cast(value.copy(), sql_type("VARCHAR"), copy=False)
        string = exp.Case(
            ifs=[
                when("string", exp.JSONBExtractScalar(this=value.copy(), expression=root)),
                when("boolean", serialised.copy()),
            ],
            default=_string(""),
        )
        return [rank, number, _code_point(string), _code_point(serialised)]

    # -- computed traits read on their own ------------------------------------------------------
    def _trait_rows(self, trait: ComputedTrait, at_us: int) -> exp.Select:
        """As the base compiler, but `first`, `last` and `most_frequent` keep one row per
        profile with `DISTINCT ON` (one sort, instead of a window ranking rows to filter)."""
        agg, prop = trait.aggregation, trait.prop
        if agg not in ("first", "last", "most_frequent") or prop is None:
            return super()._trait_rows(trait, at_us)
        doc = col("properties", "e")
        path = self.json_path(prop.split("."))
        events = self._events(trait.event, trait.where, trait.window, at_us)
        events = events.where(self._present(doc, path), append=True, copy=False)
        pid = col("canonical_profile_id", "e")
        if agg == "most_frequent":
            return self._most_frequent_rows(events, pid, self.json_value(doc, path))
        desc = agg == "last"
        keys = [col(TS, "e"), self.text_order(col("message_id", "e"))]
        return _one_per_profile(
            events.select(
                exp.alias_(pid, "profile_id", copy=False),
                exp.alias_(self.json_value(doc, path), "v", copy=False),
                append=False,
                copy=False,
            ),
            pid,
            [exp.Ordered(this=k, desc=desc, nulls_first=False) for k in keys],
        )

    def _most_frequent_rows(self, events: exp.Select, pid: exp.Expr, value: exp.Expr) -> exp.Select:
        """Each value's count (by JSON text: 5 and 5.0 differ), the top one per profile."""
        text = exp.cast(value, sql_type("VARCHAR"), copy=False)
        grouped = events.select(
            exp.alias_(pid, "profile_id", copy=False),
            exp.alias_(text, "vj", copy=False),
            exp.alias_(exp.Count(this=exp.Star()), "n", copy=False),
            append=False,
            copy=False,
        ).group_by(pid.copy(), text.copy(), copy=False)
        json = exp.cast(col("vj"), sql_type("JSON"), copy=False)
        keys = [exp.Ordered(this=col("n"), desc=True, nulls_first=False)]
        keys += [exp.Ordered(this=k, nulls_first=False) for k in self._tie_keys(json)]
        picked = exp.select(
            col("profile_id"), exp.alias_(json.copy(), "v", copy=False), copy=False
        ).from_(grouped.subquery("g", copy=False), copy=False)
        return _one_per_profile(picked, col("profile_id"), keys)


def _one_per_profile(query: exp.Select, pid: exp.Expr, keys: list[exp.Ordered]) -> exp.Select:
    """`SELECT DISTINCT ON (pid) … ORDER BY pid, keys`: each profile's first row by `keys`."""
    first = exp.Ordered(this=pid.copy(), nulls_first=False)
    return query.distinct(pid.copy(), copy=False).order_by(first, *keys, copy=False)
