"""Everything `cohortsync serve` runs beside ingest: real-time evaluation, scheduled refreshes,
and delivery, each in its own thread over the one store.

The delivery loop is woken the moment evaluation records a change (no polling interval between the
outbox and the destination); it also wakes every few seconds for retries that come due, and
plans conversions. Destinations set `dry_run: true` are delivered as `cohortsync sync` delivers
them: each batch written once under the dry-run folder and resolved as a dry run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx

from cohortsync.identity.log_scrub import scrubbed_logger
from cohortsync.moments import to_micros
from cohortsync.realtime.cadence import CadenceScheduler
from cohortsync.realtime.loop import RealtimeLoop
from cohortsync.store.base import Store
from cohortsync.sync.configure import SyncSetup
from cohortsync.sync.ledger import ledger_for
from cohortsync.sync.retry import RetryPolicy
from cohortsync.sync.run import HTTP_TIMEOUT, dry_run_folders
from cohortsync.sync.worker import Deliverer, DeliveryReport

log = scrubbed_logger("cohortsync.serve")
RETRY_POLL = 2.0
CONVERSIONS_EVERY = 10.0
CADENCE_POLL = 15.0


class _Worker:
    """A named daemon thread running `step` until stopped; `wake` runs it early."""

    def __init__(self, name: str, step: Callable[[], None], every: float) -> None:
        self.step = step
        self.every = every
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.step()
            except Exception:  # a failing round is retried; nothing is lost (outbox, cursor)
                log.exception("%s round failed", self._thread.name)
            self._wake.wait(self.every)
            self._wake.clear()


class DeliveryLoop:
    """Drains the outbox of every destination (writing dry runs for those set `dry_run: true`);
    plans conversions now and then."""

    def __init__(
        self,
        store: Store,
        setup: SyncSetup,
        root: Path,
        policy: RetryPolicy,
        clock: Callable[[], datetime],
        dry_run_folder: Path,
    ) -> None:
        self.store = store
        self.setup = setup
        self.clock = clock
        self.http = httpx.Client(timeout=HTTP_TIMEOUT, follow_redirects=False)
        self.destinations = setup.open(root, self.http, clock)
        folders = dry_run_folders(dry_run_folder, self.destinations)
        self.deliverer = Deliverer(
            ledger_for(store), self.destinations, policy, clock, setup.identifiers, dry_runs=folders
        )
        self._planned_at = 0.0
        self.rounds = 0
        self.on_report: Callable[[DeliveryReport], None] | None = None
        """Called with what each round delivered, once the outbox recorded it (metrics)."""

    def step(self) -> None:
        """Plan conversions if it is time, then deliver everything due."""
        now = self.clock()
        if now.timestamp() - self._planned_at >= CONVERSIONS_EVERY:
            ledger_for(self.store).plan_conversions(self.setup.conversion_routes, now)
            self._planned_at = now.timestamp()
        report = self.deliverer.run()
        self.rounds += 1
        if self.on_report is not None:
            self.on_report(report)

    def close(self) -> None:
        for destination in self.destinations.values():
            destination.close()
        self.http.close()


class ServeWorkers:
    """Real-time evaluation, scheduled refreshes and delivery, started and stopped together."""

    def __init__(
        self,
        loop: RealtimeLoop,
        cadence: CadenceScheduler,
        delivery: DeliveryLoop,
        clock: Callable[[], datetime],
    ) -> None:
        self.loop = loop
        self.cadence = cadence
        self.delivery = delivery
        self.clock = clock
        self._delivering = threading.Lock()
        self._refreshing = threading.Lock()
        self._delivery = _Worker("cohortsync-delivery", self._deliver, RETRY_POLL)
        self._cadence = _Worker("cohortsync-cadence", self._refresh, CADENCE_POLL)
        loop.on_change = self._delivery.wake

    def _deliver(self) -> None:
        with self._delivering:
            self.delivery.step()

    def _refresh(self) -> None:
        with self._refreshing:
            refreshed = self.cadence.run_due(to_micros(self.clock()))
        if refreshed is not None:
            self._delivery.wake()

    @contextmanager
    def computing(self) -> Iterator[None]:
        """Hold off scheduled refreshes and real-time rounds while the block computes (a compute
        asked over the admin API); delivery is woken after it."""
        with self._refreshing, self.loop.round_lock:
            yield
        self._delivery.wake()

    @contextmanager
    def delivering(self) -> Iterator[None]:
        """Hold off the delivery thread while the block delivers or requeues (a sync asked over
        the admin API), so no batch is claimed by two deliverers; delivery is woken after it."""
        with self._delivering:
            yield
        self._delivery.wake()

    def start(self) -> None:
        """Catch up real-time evaluation, then start every thread."""
        self._delivery.start()
        self.loop.start()
        self._cadence.start()

    def not_running(self) -> list[str]:
        """The threads that should run and do not (all of them before `start`)."""
        threads = (
            ("real-time evaluation", self.loop.running()),
            ("delivery", self._delivery.running()),
            ("scheduled refreshes", self._cadence.running()),
        )
        return [name for name, running in threads if not running]

    def stop(self) -> None:
        """Stop every thread after its current round."""
        self._cadence.stop()
        self.loop.stop()
        self._delivery.stop()
        self.delivery.close()
