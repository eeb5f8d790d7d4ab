"""Which per-profile read a query may start from instead of every live profile.

A compiled condition is a boolean over the columns of left-joined per-profile reads. When the
condition cannot hold for a profile that read has no row for (its columns all NULL), only that
read's profiles can be members: the query starts from it and skips scanning and joining every
profile, which at a million events is a third of a small audience's time. The profile ids of a
read of the event log are canonical ids (`profile_events`), which are always live.

`rejects_nulls` decides it by evaluating the condition over sets of possible values, three-valued
logic (TRUE, FALSE, NULL) plus numeric constants and any other non-null value; what it does not
know yields everything.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable

from sqlglot import exp

T, F, N, V = "T", "F", "N", "V"  # true, false, null, any other value
Value = str | float  # one of those, or a known number
Values = frozenset[Value]
ANY: Values = frozenset({T, F, N, V})
BOOL: frozenset[str] = frozenset({T, F})

_NOT = {T: F, F: T, N: N}
_COMPARE: dict[type[exp.Expr], Callable[[float, float], bool]] = {
    exp.EQ: operator.eq,
    exp.NEQ: operator.ne,
    exp.GT: operator.gt,
    exp.GTE: operator.ge,
    exp.LT: operator.lt,
    exp.LTE: operator.le,
}
_COMPARISONS = (*_COMPARE, exp.Like, exp.ILike)


def _and(a: str, b: str) -> str:
    if F in (a, b):
        return F
    return N if N in (a, b) else T


def _or(a: str, b: str) -> str:
    if T in (a, b):
        return T
    return N if N in (a, b) else F


def _truth(values: Values) -> frozenset[str]:
    """The values as booleans (a non-boolean value may be read as either)."""
    truths = frozenset(v for v in values if v in (T, F, N))
    return truths | (BOOL if len(truths) < len(values) else frozenset())


def _compared(expr: exp.Expr, left: Values, right: Values) -> Values:
    """The values of a comparison: NULL beside NULL, computed between numbers, else either."""
    out: set[Value] = {N} if N in left or N in right else set()
    for a in left - {N}:
        for b in right - {N}:
            test = _COMPARE.get(type(expr))
            if isinstance(a, float) and isinstance(b, float) and test is not None:
                out.add(T if test(a, b) else F)
            else:
                return frozenset(out | BOOL)
    return frozenset(out)


def _literal(expr: exp.Literal) -> Value:
    if expr.is_string:
        return V
    try:
        return float(expr.this)
    except ValueError:
        return V


def _lift(op: Callable[[str, str], str], parts: Iterable[Values]) -> frozenset[str]:
    result: frozenset[str] | None = None
    for values in parts:
        part = _truth(values)
        result = part if result is None else frozenset(op(a, b) for a in result for b in part)
    return result if result is not None else BOOL | {N}


def possible(expr: exp.Expr, nulls: frozenset[str]) -> Values:
    """The values `expr` may take when every column named in `nulls` is NULL."""
    if isinstance(expr, exp.Paren):
        return possible(expr.this, nulls)
    if isinstance(expr, exp.Column):
        return frozenset({N}) if expr.name in nulls else ANY
    if isinstance(expr, exp.Null):
        return frozenset({N})
    if isinstance(expr, exp.Boolean):
        return frozenset({T if expr.this else F})
    if isinstance(expr, exp.Literal):
        return frozenset({_literal(expr)})
    if isinstance(expr, exp.And | exp.Or):
        op = _and if isinstance(expr, exp.And) else _or
        return _lift(op, (possible(expr.this, nulls), possible(expr.expression, nulls)))
    if isinstance(expr, exp.Not):
        return frozenset(_NOT[v] for v in _truth(possible(expr.this, nulls)))
    if isinstance(expr, exp.Is) and isinstance(expr.expression, exp.Null):
        inner = possible(expr.this, nulls)
        return frozenset(({T} if N in inner else set()) | ({F} if inner - {N} else set()))
    if isinstance(expr, exp.Coalesce):
        out: set[Value] = set()
        for arg in (expr.this, *expr.expressions):
            values = possible(arg, nulls)
            out |= values - {N}
            if N not in values:
                return frozenset(out)
        return frozenset(out | {N})
    if isinstance(expr, _COMPARISONS):
        return _compared(expr, possible(expr.this, nulls), possible(expr.expression, nulls))
    if isinstance(expr, exp.Between):
        bounds = [possible(e, nulls) for e in (expr.this, expr.args["low"], expr.args["high"])]
        nullable = any(N in b for b in bounds)
        return frozenset(
            ({N} if nullable else set()) | (BOOL if all(b - {N} for b in bounds) else set())
        )
    if isinstance(expr, exp.Cast):
        inner = possible(expr.this, nulls)
        return frozenset({N}) if inner == {N} else ANY
    return ANY


def rejects_nulls(condition: exp.Expr, columns: frozenset[str]) -> bool:
    """Whether `condition` is never TRUE while every column in `columns` is NULL."""
    return T not in _truth(possible(condition, columns))


def output_columns(read: exp.Subquery) -> frozenset[str]:
    """The names of the columns a per-profile read yields."""
    return frozenset(e.alias_or_name for e in read.this.expressions)
