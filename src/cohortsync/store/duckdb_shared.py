"""What the DuckDB stores share: the connection view, Arrow tables registered for a block."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import duckdb
import pyarrow as pa

Transaction = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


class ConnectionView:
    """A part of the store over its one connection, sharing its lock and transactions."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, lock: threading.RLock, transaction: Transaction
    ) -> None:
        self._con = con
        self._lock = lock
        self._transaction = transaction


class Registered:
    """Register Arrow tables under names for the length of a `with` block."""

    def __init__(self, con: duckdb.DuckDBPyConnection, **tables: pa.Table) -> None:
        self.con, self.tables = con, tables

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        for name, table in self.tables.items():
            self.con.register(name, table)
        return self.con

    def __exit__(self, *_: object) -> None:
        for name in self.tables:
            self.con.unregister(name)


def first_row(rows: list[tuple[Any, ...]]) -> tuple[Any, ...] | None:
    """The first row of a fully fetched result (DuckDB keeps unfinished results open)."""
    return rows[0] if rows else None
