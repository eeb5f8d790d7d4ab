"""The outbox on Postgres: set-based planning, claims with SKIP LOCKED, resolutions."""

from __future__ import annotations

from cohortsync.store.outbox import OutboxStore
from cohortsync.store.postgres_shared import PgView


class PostgresOutbox(PgView, OutboxStore):
    """The sync state in Postgres; any number of delivery workers claim from it at once."""
