"""Prometheus metrics of `cohortsync serve`, in one registry per app, scraped at `/metrics`.

Each figure is counted where the thing happens: ingest counts a request's events once its
commit was acknowledged (one increment per request, nothing per event); the real-time loop
and the delivery loop report each round; the outbox and dead letters are counted in the store
when Prometheus scrapes. Labels carry only configured names (sources, destinations), never
an identifier of a person.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cohortsync.engine import (
    DeliveryBacklog,
    DeliveryReport,
    IngestResult,
    RoundReport,
    ServeWorkers,
)
from cohortsync.events.models import Message, Rejection
from cohortsync.server.metrics_store import OutboxCollector

OUTCOMES = ("acknowledged", "retried", "failed", "dead")
"""Outcomes of delivered records: acknowledged by the destination, deferred to a later
attempt, refused by it for good (or not matchable), moved to dead letters."""

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class ServeMetrics:
    """Every metric of one app, registered in its own registry (apps never share one)."""

    def __init__(self, sources: Iterable[str] = ()) -> None:
        self.registry = registry = CollectorRegistry()
        self.received = Counter(
            "cohortsync_events_received",
            "Events in authenticated ingest requests (stored, duplicate or quarantined).",
            ["source"],
            registry=registry,
        )
        self.stored = Counter(
            "cohortsync_events_stored",
            "Valid events whose durable commit was acknowledged (the bus's, in the ingest role).",
            ["source"],
            registry=registry,
        )
        self.quarantined = Counter(
            "cohortsync_events_quarantined",
            "Invalid events durably written to quarantine with the reason.",
            ["source"],
            registry=registry,
        )
        self.duplicates = Counter(
            "cohortsync_events_duplicate",
            "Acknowledged events whose message id was already stored: not written twice.",
            registry=registry,
        )
        self.failed_requests = Counter(
            "cohortsync_ingest_failed_requests",
            "Ingest requests answered 503 because their events could not be stored.",
            registry=registry,
        )
        self.ingest_latency = Histogram(
            "cohortsync_ingest_latency_seconds",
            "From an ingest request received to its durable commit acknowledged.",
            buckets=_SECONDS,
            registry=registry,
        )
        self.realtime_lag = Histogram(
            "cohortsync_realtime_lag_seconds",
            "Per real-time round: from the commit of its oldest event to its evaluation done.",
            buckets=_LAG,
            registry=registry,
        )
        self.timer_lag = Histogram(
            "cohortsync_timer_lag_seconds",
            "How late each real-time timer fired after its due instant.",
            buckets=_LAG,
            registry=registry,
        )
        self.deliveries = Counter(
            "cohortsync_delivery_records",
            "Records (changes, conversions) sent to a destination, by outcome.",
            ["destination", "outcome"],
            registry=registry,
        )
        self._backlog: Gauge | None = None
        self._sources: dict[str, tuple[Counter, Counter, Counter]] = {}
        for source in sources:  # every series exists from the start, at 0
            self._source(source)

    def arrived(self, source: str, events: int) -> None:
        """An authenticated request brought `events` (valid or not) to store."""
        self._source(source)[0].inc(events)

    def ingested(self, source: str, messages: int, rejections: int, seconds: float) -> None:
        """One request's events were durably committed `seconds` after it arrived."""
        _, stored, quarantined = self._source(source)
        stored.inc(messages)
        quarantined.inc(rejections)
        self.ingest_latency.observe(seconds)

    def _source(self, source: str) -> tuple[Counter, Counter, Counter]:
        """The received, stored and quarantined counters of one source (looked up once)."""
        if source not in self._sources:
            self._sources[source] = (
                self.received.labels(source),
                self.stored.labels(source),
                self.quarantined.labels(source),
            )
        return self._sources[source]

    def committed(self, result: object) -> None:
        """One group commit's result: the duplicates it left out."""
        if isinstance(result, IngestResult) and result.duplicates:
            self.duplicates.inc(result.duplicates)

    def count_outbox(
        self, count: Callable[[], DeliveryBacklog], destinations: Iterable[str]
    ) -> None:
        """Count the store's outbox and dead letters (`count`) at each scrape."""
        self.registry.register(OutboxCollector(count, sorted(destinations)))

    def watch(self, workers: ServeWorkers) -> None:
        """Follow `serve`'s background work: real-time rounds and deliveries."""
        for destination in workers.delivery.destinations:
            for outcome in OUTCOMES:
                self.deliveries.labels(destination, outcome)
        workers.loop.on_round = self._round
        workers.delivery.on_report = self._delivered
        if self._backlog is None:
            self._backlog = Gauge(
                "cohortsync_realtime_backlog_age_seconds",
                "How long the oldest stored event not yet evaluated in real time has waited.",
                registry=self.registry,
            )
        self._backlog.set_function(workers.loop.backlog_age)

    def _round(self, report: RoundReport) -> None:
        if report.waited is not None:
            self.realtime_lag.observe(report.waited)
        for late_us in report.timers_late_us:
            self.timer_lag.observe(max(0, late_us) / 1_000_000)

    def _delivered(self, report: DeliveryReport) -> None:
        for (destination, _), tally in report.tallies.items():
            counts = (
                tally.acknowledged,
                tally.retrying,
                0 if tally.dry_run else tally.rejected,  # a dry run refuses nothing for real
                tally.dead_lettered,
            )
            for outcome, count in zip(OUTCOMES, counts, strict=True):
                if count:
                    self.deliveries.labels(destination, outcome).inc(count)


def metered(
    commit: Callable[[Sequence[Message], Sequence[Rejection]], object], metrics: ServeMetrics
) -> Callable[[Sequence[Message], Sequence[Rejection]], object]:
    """`commit`, counting the duplicates each commit left out."""

    def commit_counted(messages: Sequence[Message], rejections: Sequence[Rejection]) -> object:
        result = commit(messages, rejections)
        metrics.committed(result)
        return result

    return commit_counted
