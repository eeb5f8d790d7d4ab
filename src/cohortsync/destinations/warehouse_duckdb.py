"""The warehouse on a DuckDB file: one connection, batches staged as Arrow tables.

DuckDB appends Arrow at millions of rows a second but single-row INSERTs at about a thousand,
so a batch is registered as one Arrow table and copied into a temporary stage in one statement.
DuckDB lets one process write a file: a file held by another process is a `TransientError`;
inside one process, writers of the same file take turns (DuckDB would fail the second on a key).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from cohortsync.destinations.base import (
    AuthError,
    DeliveryError,
    PermanentError,
    TransientError,
)
from cohortsync.destinations.http import scrub
from cohortsync.destinations.warehouse_schema import DUCKDB, Column, ColumnType, Dialect

T = TypeVar("T")
_ARROW: dict[ColumnType, pa.DataType] = {
    "text": pa.string(),
    "bigint": pa.int64(),
    "int": pa.int32(),
    "bool": pa.bool_(),
    "ts": pa.timestamp("us", tz="UTC"),
    "double": pa.float64(),
    "json": pa.string(),
}
_ARROW_VIEW = "cohortsync_arrow_batch"
_FILE_LOCKS: dict[Path, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: Path) -> threading.Lock:
    """The lock every writer of `path` in this process takes around its transaction."""
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(path.resolve(), threading.Lock())


class DuckDBSession:
    """A connection to one DuckDB file, opened on first use and closed by `close()`."""

    dialect: Dialect = DUCKDB

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._turn = _file_lock(path)
        self._conn: duckdb.DuckDBPyConnection | None = None

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = duckdb.connect(str(self.path))
            except OSError as exc:
                raise TransientError(
                    f"{self.what}: cannot create the folder of {self.path} ({exc.strerror})"
                ) from None
            except duckdb.Error as exc:
                raise self._translate(exc, opening=True) from None
        return self._conn

    def transaction(self, work: Callable[[DuckDBSession], T]) -> T:
        """Run `work` in one transaction: all of it is committed, or none of it."""
        with self._turn:
            conn = self._connection()
            try:
                conn.begin()
                result = work(self)
                conn.commit()
                return result
            except duckdb.Error as exc:
                self._rollback()
                raise self._translate(exc) from None
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.rollback()
        except duckdb.Error:
            self.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it inserted, updated or deleted."""
        cursor = self._connection().execute(sql, list(params) if params else None)
        row = cursor.fetchone() if cursor.description else None
        return int(row[0]) if row and isinstance(row[0], int) else 0

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one query and return its rows."""
        return list(self._connection().execute(sql, list(params) if params else None).fetchall())

    def stage_select(self, name: str, select: str) -> None:
        """Create temporary table `name` from a query."""
        self._connection().execute(f'CREATE OR REPLACE TEMP TABLE "{name}" AS {select}')

    def stage(self, name: str, columns: Sequence[Column], data: Mapping[str, list[Any]]) -> None:
        """Create temporary table `name` holding `data` (column name → values), via Arrow."""
        table = pa.table({c.name: pa.array(data[c.name], type=_ARROW[c.type]) for c in columns})
        conn = self._connection()
        conn.register(_ARROW_VIEW, table)
        try:
            conn.execute(f'CREATE OR REPLACE TEMP TABLE "{name}" AS SELECT * FROM {_ARROW_VIEW}')
        finally:
            conn.unregister(_ARROW_VIEW)

    def drop(self, name: str) -> None:
        """Drop a temporary table made by `stage` or `execute`."""
        self._connection().execute(f'DROP TABLE IF EXISTS "{name}"')

    def close(self) -> None:
        """Close the file (idempotent); the next call reopens it."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(duckdb.Error):
                conn.close()

    def _translate(self, exc: duckdb.Error, opening: bool = False) -> DeliveryError:
        """A lock held by another process, I/O or a write conflict is transient; a file that
        cannot be opened otherwise pauses the destination (auth); a refused write is permanent."""
        message = str(exc)
        if isinstance(exc, duckdb.IOException) and "lock" in message.lower():
            self.close()
            return TransientError(
                f"{self.what}: the DuckDB file {self.path} is open in another process "
                "(DuckDB lets one process write a file); the batch will be retried"
            )
        if isinstance(exc, duckdb.IOException | duckdb.TransactionException):
            self.close()
            return TransientError(f"{self.what}: DuckDB {self.path}: {scrub(message)}")
        if opening:
            return AuthError(f"{self.what}: cannot open DuckDB {self.path}: {scrub(message)}")
        return PermanentError(
            f"{self.what}: DuckDB {self.path} refused the write: {scrub(message)}"
        )
