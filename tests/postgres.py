"""The local Postgres for tests: found once, a fresh schema per test, dropped after.

Postgres is the server at 127.0.0.1:5432 (database `test`, trust auth, user postgres or root),
which `.ci/run` starts when it is down. Elsewhere the tests that need it skip with one line.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
import pytest

PG_HOST = "127.0.0.1:5432"


def find_postgres() -> tuple[str | None, str]:
    """A URL to the local test database, or None and why it cannot be reached."""
    reason = ""
    for user in ("postgres", "root"):
        url = f"postgresql://{user}@{PG_HOST}/test"
        try:
            with psycopg.connect(url, connect_timeout=3):
                return url, ""
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0]
    return None, reason


PG_URL, PG_REASON = find_postgres()
SKIP_REASON = f"Postgres not reachable at {PG_HOST} (database test): {PG_REASON}"


def require_postgres() -> str:
    """The test database's URL; skips the test when there is none."""
    if PG_URL is None:
        pytest.skip(SKIP_REASON)
    return PG_URL


@contextmanager
def postgres_schema(prefix: str = "cs") -> Iterator[str]:
    """A URL whose connections work in a new, empty schema; the schema is dropped after."""
    base = require_postgres()
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
    try:
        yield f"{base}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(  # sessions holding this schema's tables must not block the drop
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l "
                "JOIN pg_class c ON c.oid = l.relation "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND l.pid <> pg_backend_pid()",
                (schema,),
            )
            conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[arg-type]
