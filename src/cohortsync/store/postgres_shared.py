"""What the Postgres store's parts share: one connection per thread, transactions, bulk copies.

Several threads of one process (ingest, real-time loop, delivery) and several processes write
the store at once; each thread holds its own connection, so Postgres, not a Python lock,
decides who waits. Every statement runs inside `transaction()` (psycopg's non-autocommit
mode), so a block either commits whole or not at all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
import pyarrow as pa
from psycopg.types.json import set_json_loads

from cohortsync.errors import StoreError
from cohortsync.store.locations import redact
from cohortsync.store.sql import Dialect, SqlType, bound, columns_of, render

CONNECT_TIMEOUT = 10


class StoreUnavailableError(StoreError):
    """The Postgres store cannot be reached; the message names it without its password."""


class PgConnections:
    """One connection per thread to the store's database, opened on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = redact(url)
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, psycopg.Connection[Any]]] = []
        self._guard = threading.Lock()
        self._closed = False

    def connection(self) -> psycopg.Connection[Any]:
        """This thread's connection (a broken one is replaced; a closed store opens none)."""
        if self._closed:
            raise StoreUnavailableError(f"the store at {self.shown} is closed")
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and not (conn.closed or conn.broken):
            return conn
        # No server-side prepared statements: their generic plans compare `= ANY(array)` row by
        # row, and a statement's best plan depends on the batch in hand.
        options: dict[str, Any] = {"application_name": "cohortsync", "prepare_threshold": None}
        if "connect_timeout" not in self.url:
            options["connect_timeout"] = CONNECT_TIMEOUT
        try:
            conn = psycopg.connect(self.url, **options)
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailableError(
                f"cannot open the store at {self.shown}: {first.replace(self.url, self.shown)} "
                "— check that PostgreSQL runs there and the `store:` URL is right"
            ) from None
        self._local.conn = conn
        with self._guard:  # a finished thread's connection is closed, not left open
            ended = [c for t, c in self._all if not t.is_alive()]
            self._all = [(t, c) for t, c in self._all if t.is_alive()]
            self._all.append((threading.current_thread(), conn))
        for old in ended:
            old.close()
        return conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor inside one transaction: committed when the block ends, else rolled back.

        Nested use on the same thread joins the outer transaction (a savepoint).
        """
        conn = self.connection()
        with conn.transaction(), conn.cursor() as cur:
            yield cur

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only statement in its own transaction; all rows."""
        with self.transaction() as cur:
            cur.execute(sql, params)  # type: ignore[arg-type]  # our SQL text, never user text
            return cur.fetchall() if cur.description else []

    def close(self) -> None:
        """Close every thread's connection; the store opens no new one after."""
        with self._guard:
            self._closed = True
            conns, self._all = self._all, []
        for _, conn in conns:
            conn.close()


class PgView:
    """A part of the Postgres store, sharing the store's connections."""

    def __init__(self, db: PgConnections) -> None:
        self._db = db


def copy_rows(
    cur: psycopg.Cursor[Any], table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Append rows with COPY (binary-safe, one round trip): the bulk path for every write."""
    cols = ", ".join(columns)
    with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:  # type: ignore[arg-type]
        for row in rows:
            copy.write_row(row)


def temp_table(
    cur: psycopg.Cursor[Any],
    name: str,
    columns: Sequence[tuple[str, str]],
    rows: Iterable[Sequence[Any]],
) -> None:
    """A temporary table dropped at commit, filled by COPY (for set-based statements)."""
    spec = ", ".join(f"{c} {t}" for c, t in columns)
    cur.execute(f"CREATE TEMP TABLE {name} ({spec}) ON COMMIT DROP")  # type: ignore[arg-type]
    copy_rows(cur, name, [c for c, _ in columns], rows)


LOCK_KEY = "hashtextextended(current_schema() || ':' || {}, 0)"
"""SQL of an advisory lock's key: advisory locks span the whole database, so the store's
schema is part of the key (two stores in one database never wait for each other)."""


def lock_key(placeholder: str = "%s") -> str:
    """The SQL computing the advisory key of the text bound at `placeholder`."""
    return LOCK_KEY.format(placeholder)


def advisory_lock(cur: psycopg.Cursor[Any], *keys: str) -> None:
    """Hold transaction-scoped advisory locks on `keys` (sorted, so two holders never deadlock).

    Used where two processes must not interleave on the same thing: one profile's evaluation,
    one destination's claims, one compute run.
    """
    if not keys:
        return
    cur.execute(
        f"SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT {lock_key('k')} AS h "
        "FROM unnest(%s::text[]) k) l ORDER BY h",  # type: ignore[arg-type]
        (list(keys),),
    )


_PG_TYPES: dict[str, str] = {
    "text": "text",
    "bigint": "bigint",
    "boolean": "boolean",
    "timestamptz": "timestamptz",
    "double": "double precision",
}

_SEQUENCES = {
    "change_id": "change_ids",
    "conversion_id": "conversion_ids",
    "sync_run": "sync_run_ids",
    "compute_run": "compute_run_ids",
}

_HOLD = """
WITH k AS (SELECT {key} AS h)
SELECT CASE
    WHEN EXISTS (SELECT 1 FROM pg_locks l, k
                 WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.granted
                   AND l.objsubid = 1 AND l.classid::bigint = (k.h >> 32) & 4294967295
                   AND l.objid::bigint = k.h & 4294967295) THEN true
    ELSE pg_try_advisory_lock(k.h) END
FROM k
""".format(key=lock_key("%(key)s"))

_UNLOCK = f"SELECT pg_advisory_unlock({lock_key()})"


class PgTx:
    """`Tx` over one cursor inside one Postgres transaction."""

    dialect: Dialect = "postgres"

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self.cur = cur
        set_json_loads(orjson.loads, cur)  # several times faster than json.loads
        self._lent: dict[str, Any] = {}  # the arrays behind `rows` relations

    def _execute(
        self, template: str, params: Mapping[str, Any] | None, fill: Mapping[str, str]
    ) -> None:
        sql, names = render(template, "postgres", **fill)
        # No prepared plans: the best plan of `= ANY(array)` depends on the batch in hand.
        self.cur.execute(sql.encode(), bound(names, self._lent, params), prepare=False)

    def run(
        self, template: str, params: Mapping[str, Any] | None = None, **fill: str
    ) -> list[tuple[Any, ...]]:
        self._execute(template, params, fill)
        return self.cur.fetchall() if self.cur.description else []

    def changed(self, template: str, params: Mapping[str, Any] | None = None, **fill: str) -> int:
        self._execute(template, params, fill)
        return max(self.cur.rowcount, 0)

    def rows(
        self, name: str, columns: Sequence[tuple[str, SqlType]], data: Sequence[Sequence[Any]]
    ) -> str:
        arrays = []
        for column, kind, values in columns_of(columns, data):
            self._lent[f"{name}_{column}"] = list(values)
            arrays.append(f"${name}_{column}::{_PG_TYPES[kind]}[]")
        names = ", ".join(c for c, _ in columns)
        return f"unnest({', '.join(arrays)}) AS {name}({names})"

    def among(self, name: str, values: Sequence[Any], kind: SqlType = "text") -> str:
        self._lent[name] = list(values)
        return f"= ANY(${name}::{_PG_TYPES[kind]}[])"

    def keep(
        self, name: str, template: str, params: Mapping[str, Any] | None = None, **fill: str
    ) -> str:
        self.cur.execute(f"DROP TABLE IF EXISTS {name}")  # type: ignore[arg-type]
        self._execute(f"CREATE TEMP TABLE {name} ON COMMIT DROP AS {template}", params, fill)
        return name

    def table(self, name: str, columns: Sequence[tuple[str, SqlType]], data: pa.Table) -> str:
        spec = [(c, _PG_TYPES[t]) for c, t in columns]
        self.cur.execute(f"DROP TABLE IF EXISTS {name}")  # type: ignore[arg-type]
        values = [data.column(c).to_pylist() for c, _ in columns]
        temp_table(self.cur, name, spec, zip(*values, strict=True))
        self.cur.execute(f"ANALYZE {name}")  # type: ignore[arg-type]  # no statistics until then
        return name

    def counted(
        self, template: str, params: Mapping[str, Any] | None = None, **fill: str
    ) -> dict[tuple[Any, ...], int]:
        sql, names = render(template, "postgres", **fill)
        returning = sql[sql.rindex("RETURNING") + len("RETURNING") :].strip()
        self.cur.execute(
            f"WITH changed AS ({sql}) SELECT {returning}, count(*) FROM changed "  # type: ignore[arg-type]
            f"GROUP BY {returning}",
            bound(names, self._lent, params),
            prepare=False,
        )
        return {tuple(row[:-1]): int(row[-1]) for row in self.cur.fetchall()}

    def next_id(self, counter: str) -> int:
        self.cur.execute(f"SELECT nextval('{_SEQUENCES[counter]}')")  # type: ignore[arg-type]
        row = self.cur.fetchone()
        return int(row[0]) if row else 1

    def lock(self, *keys: str, shared: bool = False) -> None:
        if shared:
            for key in sorted(set(keys)):
                self.cur.execute(
                    f"SELECT pg_advisory_xact_lock_shared({lock_key()})",  # type: ignore[arg-type]
                    (key,),
                )
            return
        advisory_lock(self.cur, *keys)

    def hold(self, key: str) -> bool:
        self.cur.execute(_HOLD, {"key": key})  # type: ignore[arg-type]
        row = self.cur.fetchone()
        return bool(row and row[0])

    def number(self, counter: str, order: str) -> str:
        return f"nextval('{_SEQUENCES[counter]}')"

    def numbered(self, counter: str, count: int) -> None:
        """Sequences number themselves."""


class PgSql:
    """`SqlStore` over the store's per-thread connections."""

    dialect: Dialect = "postgres"

    def __init__(self, db: PgConnections) -> None:
        self._db = db

    @contextmanager
    def transaction(self) -> Iterator[PgTx]:
        with self._db.transaction() as cur:
            yield PgTx(cur)

    def release(self, key: str) -> None:
        self._db.query(_UNLOCK, (key,))

    @contextmanager
    def reading(self) -> Iterator[PgTx]:
        with self._db.transaction() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield PgTx(cur)
