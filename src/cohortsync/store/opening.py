"""Open the store a project names: a DuckDB file by default, Postgres for a URL."""

from __future__ import annotations

import re

from cohortsync.errors import StoreError, StoreInUseError
from cohortsync.store.base import Store
from cohortsync.store.locations import is_postgres_url

# DuckDB says: Could not set lock on file "…": Conflicting lock is held in /usr/bin/python3 (PID 42)
_LOCK_HOLDER = re.compile(r"\(PID (\d+)\)")


def open_store(location: str) -> Store:
    """A `postgresql://` URL opens the Postgres store (several processes may write it);
    anything else is the path of the embedded DuckDB file."""
    if is_postgres_url(location):
        from cohortsync.store.postgres_store import PostgresStore

        return PostgresStore(location)
    import duckdb

    from cohortsync.store.duckdb_store import DuckDBStore

    try:
        return DuckDBStore(location)
    except duckdb.IOException as exc:
        message = str(exc).removeprefix("IO Error: ")
        if "Could not set lock" in message:
            raise _in_use_error(location, message) from None
        raise StoreError(
            f"cannot open the store {location}: {message} — check `store:` in cohortsync.yml"
        ) from None


def _in_use_error(location: str, message: str) -> StoreInUseError:
    """What to tell a user whose command found the DuckDB file locked by another process."""
    holder = _LOCK_HOLDER.search(message)
    who = f"pid {holder.group(1)}, " if holder else ""
    return StoreInUseError(
        f"the store {location} is in use by another process ({who}e.g. a running "
        "`cohortsync serve`): stop it and run this again, or keep the store in Postgres "
        "(store: postgresql://…), which several processes can share"
    )
