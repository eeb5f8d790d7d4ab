"""The real-time side of the Postgres store: histories, per-profile records, leased timers."""

from __future__ import annotations

from collections.abc import Callable

from cohortsync.store.postgres_shared import PgConnections, PgView
from cohortsync.store.realtime import RealtimeStore
from cohortsync.store.records import Message


class PostgresRealtime(PgView, RealtimeStore):
    """Per-profile evaluation state in Postgres, safe with several workers evaluating at once."""

    def __init__(self, db: PgConnections) -> None:
        super().__init__(db)
        self.relevant: Callable[[Message], bool] | None = None
        """Stored messages that mark their profile pending (None: every message)."""

    def watch(self, relevant: Callable[[Message], bool]) -> None:
        self.relevant = relevant
