"""The dashboard's figures read from the store: a few set-based statements that both stores
run (`store.sql.reading()`), never a Python loop over events (`Engine.figures`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cohortsync.store.base import NOT_TEST, Store

_PER_MINUTE = f"""
SELECT date_trunc('minute', "timestamp" AT TIME ZONE 'UTC') AS minute, count(*)
FROM events WHERE "timestamp" >= $since AND "timestamp" < $until AND {NOT_TEST}
GROUP BY 1 ORDER BY 1"""

_PROFILES = f"SELECT count(*) FROM profiles WHERE merged_into IS NULL AND {NOT_TEST}"

_SIZES = f"""
SELECT name, count(*), count(*) FILTER (WHERE holdout) FROM memberships
WHERE kind = 'audience' AND exited_at IS NULL AND {NOT_TEST} GROUP BY name"""

# Members at `since`, then entries and exits per UTC day from `since` to `until`.
_HISTORY = f"""
WITH stays AS (
  SELECT entered_at, exited_at FROM memberships
  WHERE kind = 'audience' AND name = $audience AND entered_at < $until AND {NOT_TEST}
)
SELECT 'before' AS what, CAST(NULL AS TIMESTAMP) AS day,
       count(*) FILTER (WHERE entered_at < $since AND (exited_at IS NULL OR exited_at >= $since))
FROM stays
UNION ALL
SELECT 'entered', date_trunc('day', entered_at AT TIME ZONE 'UTC'), count(*)
FROM stays WHERE entered_at >= $since GROUP BY 2
UNION ALL
SELECT 'exited', date_trunc('day', exited_at AT TIME ZONE 'UTC'), count(*)
FROM stays WHERE exited_at >= $since AND exited_at < $until GROUP BY 2"""

# Per audience (NULL: conversions), the records and the reason of the latest one.
_DEAD = """
WITH dead AS (
  SELECT audience, reason, dead_at FROM dead_letters
  WHERE destination = $destination AND retried_at IS NULL
), grouped AS (
  SELECT audience, count(*) AS records, max(dead_at) AS last FROM dead GROUP BY audience
)
SELECT g.audience, g.records, g.last,
       (SELECT d.reason FROM dead d WHERE d.audience IS NOT DISTINCT FROM g.audience
        ORDER BY d.dead_at DESC LIMIT 1)
FROM grouped g ORDER BY g.audience NULLS FIRST"""

_IDENTIFIERS = """
SELECT i.kind, i.value, i.first_seen FROM identities i
LEFT JOIN profile_aliases a ON a.profile_id = i.profile_id
WHERE coalesce(a.canonical_id, i.profile_id) = $profile
ORDER BY i.kind, i.first_seen, i.value"""


@dataclass(frozen=True)
class AudienceSize:
    """Current members of one audience, the holdout among them."""

    members: int
    holdout: int


@dataclass(frozen=True)
class Day:
    """One UTC day of an audience's history: size at the day's end, entries and exits."""

    day: datetime
    size: int
    entered: int
    exited: int


@dataclass(frozen=True)
class DeadGroup:
    """Dead letters of one destination not yet retried, per audience (None: conversions),
    with the reason of the latest one."""

    audience: str | None
    records: int
    last: datetime
    reason: str


class Figures:
    """The statements behind the dashboard's pages, over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def events_per_minute(self, until: datetime, hours: int) -> list[tuple[datetime, int]]:
        """Events per minute by event time over the `hours` before `until` (minutes without
        events included, as zero)."""
        end = until.replace(second=0, microsecond=0) + timedelta(minutes=1)
        since = end - timedelta(hours=hours)
        with self.store.sql.reading() as tx:
            rows = tx.run(_PER_MINUTE, {"since": since, "until": end})
        counts = {_naive(r[0]): int(r[1]) for r in rows}
        start = _naive(since)
        minutes = (start + timedelta(minutes=i) for i in range(hours * 60))
        return [(m, counts.get(m, 0)) for m in minutes]

    def profile_count(self) -> int:
        """Profiles (merged ones counted once, test profiles left out)."""
        with self.store.sql.reading() as tx:
            return int(tx.run(_PROFILES)[0][0])

    def audience_sizes(self) -> dict[str, AudienceSize]:
        """Current members and holdout of every audience that has any (from the last compute)."""
        with self.store.sql.reading() as tx:
            rows = tx.run(_SIZES)
        return {str(r[0]): AudienceSize(int(r[1]), int(r[2])) for r in rows}

    def audience_history(self, audience: str, until: datetime, days: int) -> list[Day]:
        """The last `days` UTC days of one audience (holdout included): size at each day's end,
        entries and exits during it, from the membership history."""
        until = until.astimezone(UTC)
        first = (until - timedelta(days=days - 1)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        with self.store.sql.reading() as tx:
            rows = tx.run(_HISTORY, {"audience": audience, "since": first, "until": until})
        size = next((int(r[2]) for r in rows if r[0] == "before"), 0)
        entered = {_naive(r[1]): int(r[2]) for r in rows if r[0] == "entered"}
        exited = {_naive(r[1]): int(r[2]) for r in rows if r[0] == "exited"}
        out = []
        for i in range(days):
            day = _naive(first) + timedelta(days=i)
            size += entered.get(day, 0) - exited.get(day, 0)
            out.append(Day(day, size, entered.get(day, 0), exited.get(day, 0)))
        return out

    def dead_letters(self, destination: str) -> list[DeadGroup]:
        """Dead letters of `destination` waiting for a retry, per audience."""
        with self.store.sql.reading() as tx:
            rows = tx.run(_DEAD, {"destination": destination})
        return [DeadGroup(r[0], int(r[1]), r[2], str(r[3])) for r in rows]

    def identifiers(self, profile_id: str) -> list[tuple[str, str, datetime]]:
        """Kind, value and first sighting of every identifier of a profile (merged ones too)."""
        with self.store.sql.reading() as tx:
            rows = tx.run(_IDENTIFIERS, {"profile": profile_id})
        return [(str(k), str(v), f) for k, v, f in rows]


def _naive(moment: datetime) -> datetime:
    """A UTC instant as a naive datetime (the statements truncate in UTC and return naive)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
