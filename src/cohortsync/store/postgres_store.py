"""The production store: Postgres, written by any number of processes at once.

Same tables and same promises as the DuckDB store (`store/base.py`); what differs is how
writers coexist: each thread has its own connection, ids come from sequences, and where two
processes must not interleave (one profile's evaluation, one destination's claims, one compute
run) a transaction-scoped advisory lock orders them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cohortsync.store.base import Store
from cohortsync.store.outbox import OutboxStore
from cohortsync.store.postgres_outbox import PostgresOutbox
from cohortsync.store.postgres_realtime import PostgresRealtime
from cohortsync.store.postgres_schema import MIGRATIONS
from cohortsync.store.postgres_shared import PgConnections, advisory_lock
from cohortsync.store.realtime import RealtimeStore


class PostgresStore(Store):
    """A `Store` in one Postgres database (or schema: set `options=-csearch_path=…`)."""

    dialect = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self._db = PgConnections(url)
        self._outbox = PostgresOutbox(self._db)
        self._realtime = PostgresRealtime(self._db)

    def migrate(self) -> int:
        with self._db.transaction() as cur:
            advisory_lock(cur, "cohortsync:migrate")  # two processes starting at once
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, description TEXT, applied_at TIMESTAMPTZ)"
            )
            cur.execute("SELECT version FROM schema_migrations")
            done = {int(row[0]) for row in cur.fetchall()}
            for version, description, sql in MIGRATIONS:
                if version in done:
                    continue
                cur.execute(sql.encode())
                cur.execute(
                    "INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                    (version, description, datetime.now(UTC)),
                )
            cur.execute("SELECT max(version) FROM schema_migrations")
            row = cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    @property
    def outbox(self) -> OutboxStore:
        return self._outbox

    @property
    def realtime(self) -> RealtimeStore:
        return self._realtime

    def close(self) -> None:
        self._db.close()
