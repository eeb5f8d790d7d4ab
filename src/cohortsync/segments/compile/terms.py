"""What every SQL back end of the segment compiler builds with: bound literals, never-NULL
boolean terms, comparison operators, and the timestamp bounds of a window."""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from cohortsync.errors import InputError
from cohortsync.segments.ast import After, Before, Between, Ever, Window, Within
from cohortsync.segments.scan import Span

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


def literal(value: Any) -> exp.Expr:
    """A bound literal for a YAML value."""
    return exp.convert(value)


def and_(*conds: exp.Expr) -> exp.Expr:
    """Conjunction of conditions (TRUE when empty)."""
    return exp.and_(*conds, copy=False) if conds else exp.true()


def or_(*conds: exp.Expr) -> exp.Expr:
    """Disjunction of conditions (FALSE when empty)."""
    return exp.or_(*conds, copy=False) if conds else exp.false()


def false_if_null(pred: exp.Expr) -> exp.Expr:
    """`COALESCE(pred, FALSE)`: a predicate that is never NULL, so NOT stays exact."""
    return exp.Coalesce(this=pred, expressions=[exp.false()])


def one_of(value: exp.Expr, literals: list[Any]) -> exp.Expr:
    """`value = lit` for one literal, `value IN (...)` for several."""
    if len(literals) == 1:
        return exp.EQ(this=value, expression=literal(literals[0]))
    return exp.In(this=value, expressions=[literal(v) for v in literals])


def window_span(window: Window, at_us: int) -> Span:
    """The inclusive timestamp bounds (µs) of a window as of `at_us` (After: up to `at_us`, its
    anchor bounding it in a join)."""
    if isinstance(window, Ever | After):
        return Span(None, at_us)
    if isinstance(window, Within):
        return Span(at_us - window.duration.micros + 1, at_us)
    if isinstance(window, Between):
        return Span(at_us - window.older.micros, min(at_us, at_us - window.newer.micros))
    if isinstance(window, Before):
        return Span(None, min(at_us, at_us - window.duration.micros - 1))
    raise InputError(f"unknown window {window!r}")


KIND_JSON = "json"
"""A value computed as JSON (identify traits, first / last / most_frequent)."""
KIND_NUMBER = "number"
"""A value computed as a SQL number (NULL when none; counts 0)."""
