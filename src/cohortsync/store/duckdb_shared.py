"""What the DuckDB store's parts share: the connection view, Arrow tables registered for a
block, and the `SqlStore` the sync state machine runs on."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any

import duckdb
import pyarrow as pa

from cohortsync.store.sql import Dialect, SqlType, bound, columns_of, render

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


_ARROW: dict[str, pa.DataType] = {
    "text": pa.string(),
    "bigint": pa.int64(),
    "boolean": pa.bool_(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "double": pa.float64(),
}


UNNEST_AT_MOST = 20_000
"""`rows` of at most this many values are bound as lists; more are registered as Arrow."""

_DUCK_TYPES: dict[str, str] = {
    "text": "VARCHAR",
    "bigint": "BIGINT",
    "boolean": "BOOLEAN",
    "timestamptz": "TIMESTAMPTZ",
    "double": "DOUBLE",
}


class DuckDBTx:
    """`Tx` over the store's connection inside one of its transactions."""

    dialect: Dialect = "duckdb"

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self._registered: list[str] = []
        self._lent: dict[str, Any] = {}  # the lists behind small `rows` relations

    def _execute(
        self, template: str, params: Mapping[str, Any] | None, fill: Mapping[str, str]
    ) -> duckdb.DuckDBPyConnection:
        sql, names = render(template, "duckdb", **fill)
        return self.con.execute(sql, bound(names, self._lent, params) if names else None)

    def run(
        self, template: str, params: Mapping[str, Any] | None = None, **fill: str
    ) -> list[tuple[Any, ...]]:
        result = self._execute(template, params, fill)
        return result.fetchall() if result.description else []

    def changed(self, template: str, params: Mapping[str, Any] | None = None, **fill: str) -> int:
        rows = self._execute(template, params, fill).fetchall()
        return int(rows[0][0]) if rows else 0

    def rows(
        self, name: str, columns: Sequence[tuple[str, SqlType]], data: Sequence[Sequence[Any]]
    ) -> str:
        if sum(len(v) for v in data) > UNNEST_AT_MOST:
            table = pa.table(
                {c: pa.array(list(v), _ARROW[t]) for c, t, v in columns_of(columns, data)}
            )
            return self._lend(name, table)
        # A few values: bound as lists and unnested (registering a table costs ~0.5 ms).
        lists = []
        for column, kind, values in columns_of(columns, data):
            self._lent[f"{name}_{column}"] = list(values)
            lists.append(f"unnest(${name}_{column}::{_DUCK_TYPES[kind]}[]) AS {column}")
        return f"(SELECT {', '.join(lists)}) AS {name}"

    def among(self, name: str, values: Sequence[Any], kind: SqlType = "text") -> str:
        self._lent[name] = list(values)
        return f"IN (SELECT unnest(${name}::{_DUCK_TYPES[kind]}[]))"

    def _lend(self, name: str, table: pa.Table) -> str:
        """Register `table` as `name` until the transaction ends."""
        if name in self._registered:
            self.con.unregister(name)
        self.con.register(name, table)
        self._registered.append(name)
        return name

    def keep(
        self, name: str, template: str, params: Mapping[str, Any] | None = None, **fill: str
    ) -> str:
        sql, names = render(template, "duckdb", **fill)
        table = self.con.sql(sql, params=bound(names, self._lent, params) if names else None)
        return self._lend(name, table.to_arrow_table())

    def table(self, name: str, columns: Sequence[tuple[str, SqlType]], data: pa.Table) -> str:
        wanted = pa.schema([(c, _ARROW[t]) for c, t in columns])
        return self._lend(name, data.select(wanted.names).cast(wanted))

    def counted(
        self, template: str, params: Mapping[str, Any] | None = None, **fill: str
    ) -> dict[tuple[Any, ...], int]:
        sql, names = render(template, "duckdb", **fill)
        # `sql()` runs a writing statement at once and keeps its RETURNING rows as a relation.
        returned = self.con.sql(sql, params=bound(names, self._lent, params) if names else None)
        if returned is None:
            return {}
        table = returned.to_arrow_table()
        if not table.num_rows:
            return {}
        groups = table.group_by(table.column_names).aggregate([([], "count_all")])
        keys = [groups.column(c).to_pylist() for c in table.column_names]
        counts = groups.column("count_all").to_pylist()
        return {tuple(k): int(n) for *k, n in zip(*keys, counts, strict=True)}

    def next_id(self, counter: str) -> int:
        rows = self.con.execute(
            "INSERT OR REPLACE INTO counters SELECT ?, coalesce(max(value), 0) + 1 "
            "FROM counters WHERE name = ? RETURNING value",
            [counter, counter],
        ).fetchall()
        return int(rows[0][0])

    def lock(self, *keys: str, shared: bool = False) -> None:
        """One process writes a DuckDB file, under the store's lock: nothing more to hold."""

    def hold(self, key: str) -> bool:
        return True

    def number(self, counter: str, order: str) -> str:
        return (
            f"(SELECT coalesce(max(value), 0) FROM counters WHERE name = '{counter}') "
            f"+ row_number() OVER (ORDER BY {order})"
        )

    def numbered(self, counter: str, count: int) -> None:
        if count:
            self.con.execute(
                "INSERT OR REPLACE INTO counters SELECT ?, coalesce(max(value), 0) + ? "
                "FROM counters WHERE name = ?",
                [counter, count, counter],
            )

    def close(self) -> None:
        """Unregister the rows lent to this transaction."""
        for name in dict.fromkeys(self._registered):
            with suppress(duckdb.Error):  # a failed statement's result: the rollback ends it
                self.con.unregister(name)
        self._registered.clear()
        self._lent.clear()


class DuckDBSql:
    """`SqlStore` over the store's one connection, its lock and its transactions."""

    dialect: Dialect = "duckdb"

    def __init__(self, lock: threading.RLock, transaction: Transaction) -> None:
        self._lock = lock
        self._transaction = transaction

    @contextmanager
    def transaction(self) -> Iterator[DuckDBTx]:
        with self._transaction() as con:
            tx = DuckDBTx(con)
            try:
                yield tx
            finally:
                tx.close()

    def release(self, key: str) -> None:
        """Nothing is held past a transaction on DuckDB."""

    def reading(self) -> AbstractContextManager[DuckDBTx]:
        """A transaction like any other: the process's one writer takes the store's lock, and
        reads beside it took CPU the writers needed (measured in bench/README.md)."""
        return self.transaction()
