"""What waits downstream, per destination: records in the outbox and dead letters.

Two grouped counts in one read transaction (under the store's lock on DuckDB), cheap enough for
Prometheus to ask for at every scrape.
"""

from __future__ import annotations

from dataclasses import dataclass

from cohortsync.store.sql import SqlStore

_PENDING = """SELECT destination, count(*) FROM (
    SELECT destination FROM outbox UNION ALL SELECT destination FROM conversion_outbox
) AS waiting GROUP BY destination"""
_DEAD = """SELECT destination, count(*) FROM dead_letters WHERE retried_at IS NULL
GROUP BY destination"""


@dataclass(frozen=True)
class DeliveryBacklog:
    """Per destination: records (changes, conversions) waiting in the outbox, to send or to
    retry, and dead letters not queued again (`sync --retry-dead`). Destinations with none
    are absent."""

    pending: dict[str, int]
    dead: dict[str, int]


def delivery_backlog(sql: SqlStore) -> DeliveryBacklog:
    """Count the outbox and the dead letters per destination, in one snapshot."""
    with sql.reading() as tx:
        pending = {str(d): int(n) for d, n in tx.run(_PENDING)}
        dead = {str(d): int(n) for d, n in tx.run(_DEAD)}
    return DeliveryBacklog(pending, dead)
