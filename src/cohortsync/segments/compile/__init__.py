"""The segment compiler: segments, audiences and computed traits as SQL over the store.

`compiler_for` picks the back end of a store's dialect. The walk of the AST into a query is
shared (`walk`, `compiler`, `terms`); each dialect adds its JSON functions and a few overrides
(`duckdb`, `postgres`).
"""

from __future__ import annotations

from cohortsync.errors import InputError
from cohortsync.segments.compile.compiler import Compiler, MembersQuery, with_summaries
from cohortsync.segments.compile.duckdb import DuckDBCompiler
from cohortsync.segments.compile.postgres import PostgresCompiler


def compiler_for(dialect: str) -> Compiler:
    """The segment compiler for a store's SQL dialect (`Store.dialect`)."""
    if dialect == "duckdb":
        return DuckDBCompiler()
    if dialect == "postgres":
        return PostgresCompiler()
    raise InputError(f"no segment compiler for the SQL dialect {dialect!r} (duckdb, postgres)")


__all__ = [
    "Compiler",
    "DuckDBCompiler",
    "MembersQuery",
    "PostgresCompiler",
    "compiler_for",
    "with_summaries",
]
