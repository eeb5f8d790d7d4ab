"""Purchase → suppression acknowledged, per destination: from a purchase to the destination
acknowledging the membership change it caused (an entry into a purchase-suppression audience,
or an exit from any audience sent there), read from membership history and the delivery log."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cohortsync.ops.report_sql import BUCKETS, LATENCY
from cohortsync.store.sql import SqlStore


@dataclass(frozen=True)
class Bucket:
    """How many acknowledged purchases took from `low` up to `high` seconds (None: no end)."""

    label: str
    low: float
    high: float | None
    count: int


@dataclass(frozen=True)
class DestinationLatency:
    """One destination's purchase → acknowledgement latency (seconds)."""

    destination: str
    acknowledged: int
    """Purchases whose change this destination acknowledged."""
    waiting: int
    """Purchases whose change is routed here and not acknowledged yet."""
    p50: float | None
    p95: float | None
    p99: float | None
    buckets: tuple[Bucket, ...]


@dataclass(frozen=True)
class Latency:
    """Purchases of the period and how fast each destination acknowledged what they caused."""

    purchases: int
    purchases_with_change: int
    """Purchases that changed a membership (within the report window of the purchase)."""
    purchases_acknowledged: int
    """Purchases with an acknowledged change at one destination at least."""
    destinations: tuple[DestinationLatency, ...]

    @property
    def purchases_without_acknowledged_change(self) -> int:
        """Purchases no destination has acknowledged a change of yet (or that changed none)."""
        return self.purchases - self.purchases_acknowledged


def latency(
    sql: SqlStore,
    event: str,
    since: datetime,
    until: datetime,
    window_seconds: int,
    suppressing: Collection[str],
    routes: Mapping[str, Sequence[str]],
) -> Latency:
    """Latency of purchases (`event`) in [since, until]; `routes` maps each audience to the
    destinations it is sent to."""
    pairs = [(a, d) for a, ds in sorted(routes.items()) for d in ds]
    with sql.reading() as tx:
        if tx.dialect == "postgres":
            # every join here is between sets of the period, best hashed; a store without
            # statistics yet (loaded moments ago) gets nested loops over whole tables instead
            tx.run("SET LOCAL enable_nestloop = off")
        rows = tx.run(
            LATENCY,
            {"event": event, "since": since, "until": until},
            suppressing=tx.among("suppressing", sorted(suppressing)),
            routes=tx.rows(
                "r",
                (("audience", "text"), ("destination", "text")),
                [[a for a, _ in pairs], [d for _, d in pairs]],
            ),
            window=str(window_seconds),
        )
    totals: dict[str, int] = {}
    figures: dict[str, tuple[int, float | None, float | None, float | None]] = {}
    counts: dict[str, dict[int, int]] = {}
    waiting: dict[str, int] = {}
    for what, destination, bucket, n, p50, p95, p99 in rows:
        if what == "latency":
            figures[destination] = (int(n), _float(p50), _float(p95), _float(p99))
        elif what == "bucket":
            counts.setdefault(destination, {})[int(bucket)] = int(n)
        elif what == "waiting":
            waiting[destination] = int(n)
        else:
            totals[what] = int(n)
    found = []
    for destination in sorted(set(figures) | set(waiting)):
        n, p50, p95, p99 = figures.get(destination, (0, None, None, None))
        found.append(
            DestinationLatency(
                destination,
                n,
                waiting.get(destination, 0),
                p50,
                p95,
                p99,
                _buckets(counts.get(destination, {})),
            )
        )
    return Latency(
        totals.get("purchases", 0),
        totals.get("changed", 0),
        totals.get("acknowledged", 0),
        tuple(found),
    )


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _buckets(counts: Mapping[int, int]) -> tuple[Bucket, ...]:
    out, low = [], 0.0
    for i, (label, high) in enumerate(BUCKETS):
        end = None if high == float("inf") else float(high)  # a float, as JSON round-trips it
        out.append(Bucket(label, low, end, counts.get(i, 0)))
        low = float(high)
    return tuple(out)
