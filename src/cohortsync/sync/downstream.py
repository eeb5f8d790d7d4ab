"""What each audience has downstream, read from the ledger: whether anything was ever queued or
delivered for it, and how many members destinations still hold or are still to be sent.

`cohortsync lock` reads it to know which audiences have been synced (they are locked) and
whether a retired audience is empty everywhere (then it may leave the project).
"""

from __future__ import annotations

from dataclasses import dataclass

from cohortsync.store.outbox import DRY_REMOVED, DRY_RUN, REJECTED, Route
from cohortsync.store.sql import SqlStore

_DOWNSTREAM = f"""
SELECT audience, sum(held), sum(queued), sum(seen) FROM (
    SELECT audience, count(*) FILTER (WHERE status <> '{REJECTED}') AS held, 0 AS queued,
           count(*) AS seen
    FROM destination_state GROUP BY audience
    UNION ALL
    SELECT audience, 0, count(*), count(*) FROM outbox GROUP BY audience
    UNION ALL
    SELECT audience, 0, 0, count(*) FROM delivery_log
    WHERE kind = 'changes' AND audience IS NOT NULL GROUP BY audience
) d GROUP BY audience"""


@dataclass(frozen=True)
class Downstream:
    """One audience downstream, over all its destinations."""

    held: int
    """Profiles a destination holds (acknowledged, or written as a dry run), refusals left out."""
    queued: int
    """Changes in the outbox, waiting or in flight."""

    @property
    def empty(self) -> bool:
        """Nothing held and nothing left to send."""
        return self.held == 0 and self.queued == 0


def downstream(sql: SqlStore) -> dict[str, Downstream]:
    """Every audience that was ever queued or delivered to a destination, by name."""
    with sql.reading() as tx:
        rows = tx.run(_DOWNSTREAM)
    return {str(a): Downstream(int(h or 0), int(q or 0)) for a, h, q, _ in rows}


_HELD = """SELECT profile_id, holdout, status FROM destination_state
WHERE destination = $destination AND audience = $audience AND status <> $skip"""


def held(sql: SqlStore, route: Route) -> dict[str, tuple[bool, bool]]:
    """What one route's destination holds as the planner reads it (a dry-run route its dry-run
    rows, a live one what it acknowledged): profile id → (holdout, refused)."""
    skip = DRY_REMOVED if route.dry_run else DRY_RUN
    params = {"destination": route.destination, "audience": route.audience, "skip": skip}
    with sql.reading() as tx:
        rows = tx.run(_HELD, params)
    return {str(p): (bool(h), s == REJECTED) for p, h, s in rows}
