"""The real-time side of the Postgres store: histories, per-profile records, leased timers."""

from __future__ import annotations

from cohortsync.store.postgres_shared import PgView
from cohortsync.store.realtime import RealtimeStore


class PostgresRealtime(PgView, RealtimeStore):
    """Per-profile evaluation state in Postgres, safe with several workers evaluating at once."""
