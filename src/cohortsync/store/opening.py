"""Open the store a project names: a DuckDB file by default, Postgres for a URL."""

from __future__ import annotations

from cohortsync.store.base import Store
from cohortsync.store.locations import is_postgres_url


def open_store(location: str) -> Store:
    """A `postgresql://` URL opens the Postgres store (several processes may write it);
    anything else is the path of the embedded DuckDB file."""
    if is_postgres_url(location):
        from cohortsync.store.postgres_store import PostgresStore

        return PostgresStore(location)
    from cohortsync.store.duckdb_store import DuckDBStore

    return DuckDBStore(location)
