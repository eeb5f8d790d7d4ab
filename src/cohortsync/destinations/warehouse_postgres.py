"""The warehouse on Postgres: psycopg 3, batches COPYed into a temporary stage, then merged.

Stage-then-merge keeps each batch one transaction: a failure leaves nothing half-merged, and
a retry stages the same rows again. Errors never quote the password: URLs are shown redacted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

from cohortsync.destinations.base import (
    AuthError,
    DeliveryError,
    PermanentError,
    TransientError,
)
from cohortsync.destinations.http import scrub
from cohortsync.destinations.warehouse_schema import POSTGRES, Column, Dialect, column_list, q

T = TypeVar("T")
CONNECT_TIMEOUT = 10
_AUTH_STATES = ("28", "42501")  # invalid authorization (class 28), insufficient privilege
_RETRY_STATES = ("08", "40", "53", "57")  # connection, rollback, resources, operator intervention
_AUTH_MESSAGES = (
    "authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
    "not permitted to log in",
)


def redact_url(url: str) -> str:
    """The URL with any password (in the user part or the query) replaced by `***`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        netloc = f"{user}@{host}"
    query = parts.query
    if query:
        pairs = [(k, "***" if k == "password" else v) for k, v in parse_qsl(query)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class PostgresSession:
    """One connection to a Postgres database, opened on first use and closed by `close()`."""

    dialect: Dialect = POSTGRES

    def __init__(self, url: str, what: str) -> None:
        self.url = url
        self.shown = redact_url(url)
        self.what = what
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self.close()
        if self._conn is None:
            options: dict[str, Any] = {"autocommit": True, "application_name": "cohortsync"}
            if "connect_timeout" not in self.url:
                options["connect_timeout"] = CONNECT_TIMEOUT
            try:
                self._conn = psycopg.connect(self.url, **options)
            except psycopg.Error as exc:
                raise self._translate(exc, connecting=True) from None
        return self._conn

    def transaction(self, work: Callable[[PostgresSession], T]) -> T:
        """Run `work` in one transaction: all of it is committed, or none of it."""
        conn = self._connection()
        try:
            with conn.transaction():
                return work(self)
        except psycopg.Error as exc:
            raise self._translate(exc, connecting=False) from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it inserted, updated or deleted."""
        with self._connection().cursor() as cursor:
            cursor.execute(sql, list(params) if params else None)
            return max(cursor.rowcount, 0)

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one query and return its rows."""
        with self._connection().cursor() as cursor:
            cursor.execute(sql, list(params) if params else None)
            return list(cursor.fetchall())

    def stage_select(self, name: str, select: str) -> None:
        """Create temporary table `name` from a query (dropped at commit at the latest)."""
        self._connection().execute(f"CREATE TEMP TABLE {q(name)} ON COMMIT DROP AS {select}")

    def stage(self, name: str, columns: Sequence[Column], data: Mapping[str, list[Any]]) -> None:
        """Create temporary table `name` and COPY `data` (column name → values) into it."""
        conn = self._connection()
        cols = ", ".join(f"{q(c.name)} {self.dialect.types[c.type]}" for c in columns)
        conn.execute(f"CREATE TEMP TABLE {q(name)} ({cols}) ON COMMIT DROP")
        values = [data[c.name] for c in columns]
        copy_sql = f"COPY {q(name)} ({column_list(tuple(columns))}) FROM STDIN"
        with conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
            for row in zip(*values, strict=True):
                copy.write_row(row)

    def drop(self, name: str) -> None:
        """Drop a temporary table before the commit would."""
        self._connection().execute(f"DROP TABLE IF EXISTS {q(name)}")

    def close(self) -> None:
        """Close the connection (idempotent); the next call reconnects."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _translate(self, exc: psycopg.Error, connecting: bool) -> DeliveryError:
        """Unreachable, restarting or contended → transient; refused login, rights or a missing
        database → auth (paused until fixed); anything else (bad data, a table of another
        shape) → permanent."""
        state = exc.sqlstate or ""
        detail = _detail(exc, connecting)
        where = f"{self.what}: Postgres {self.shown}"
        refused = state.startswith(_AUTH_STATES) or any(m in detail for m in _AUTH_MESSAGES)
        if refused:
            return AuthError(f"{where}: access refused ({detail}); fix the user or its rights")
        if state == "3D000" or (connecting and "does not exist" in detail):
            return AuthError(f"{where}: {detail}; create it or fix `url`")
        if (
            connecting
            or isinstance(exc, psycopg.OperationalError)
            or state.startswith(_RETRY_STATES)
        ):
            self.close()
            return TransientError(f"{where}: unavailable ({detail}); the batch will be retried")
        return PermanentError(f"{where} refused the write: {detail}")


def _detail(exc: psycopg.Error, connecting: bool) -> str:
    """The useful line of a Postgres error. A failed login names only host, port, user and
    database; an error during a write may quote row values, so it is scrubbed of PII."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if connecting:
        text = text.rsplit(" failed: ", 1)[-1].removeprefix("FATAL: ")
        return text.split(" Is the server running", 1)[0]
    return scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
