"""The DuckDB back end of the segment compiler: the base compiler's JSON functions (JSON
pointers, `json_type`, `json_extract_string`), and `arg_min` to pick most frequent values inside
the shared scan, which also lets it read the store's per-profile summaries."""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from cohortsync.segments.compile.compiler import Compiler


class DuckDBCompiler(Compiler):
    """The DuckDB back end: JSON pointers with json_type / json_extract_string, and `arg_min`
    to pick most frequent values inside the shared scan."""

    dialect = "duckdb"
    reads_summaries = True

    def most_frequent_picker(self) -> Callable[[exp.Expr, exp.Expr], exp.Expr] | None:
        """`arg_min(value, (-count, tie keys...))` over the non-NULL values."""

        def pick(value: exp.Expr, count: exp.Expr) -> exp.Expr:
            key = exp.Tuple(expressions=[exp.Neg(this=count), *self._tie_keys(value)])
            present = exp.not_(exp.Is(this=value.copy(), expression=exp.null()), copy=False)
            best = exp.ArgMin(this=value.copy(), expression=key)
            return exp.Filter(this=best, expression=exp.Where(this=present))

        return pick
