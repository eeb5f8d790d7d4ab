"""The real-time loop inside `cohortsync serve`: evaluate as events arrive, fire timers on time.

Stored messages that may change a real-time audience are handed over by the engine (after
their commit) with the profiles ingest resolved them to; the loop fires every timer that is due
(each profile evaluated at its own due instant, so an exit is recorded when it happened), then
evaluates the queued profiles at now (profiles whose events only an `exits: realtime` audience
reads are evaluated only if they are its current members). After each round that changed
something, delivery is woken at once. The receive-time cursor moves only past work that is
recorded, so after a crash the profiles received since the cursor are evaluated again: nothing
is skipped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cohortsync.config.models import IdentityConfig
from cohortsync.events.pipeline import IngestResult
from cohortsync.identity.graph import extract_identifiers
from cohortsync.identity.log_scrub import scrubbed_logger
from cohortsync.moments import to_micros
from cohortsync.realtime.evaluation import ProfileProcessor
from cohortsync.realtime.index import RealtimeIndex
from cohortsync.store.base import Store
from cohortsync.store.records import IdentityChanges, Message
from cohortsync.sync.realtime_state import realtime_for

log = scrubbed_logger("cohortsync.realtime")
CURSOR_SLACK_US = 5_000_000
"""Receive times of concurrent requests may commit out of order by this much at most."""
CURSOR_EVERY_US = 1_000_000
"""How often a round moves the receive-time cursor (one write less for most rounds)."""
IDLE_WAIT = 1.0
ROUND_GAP = 0.05
"""The least time (s) between the end of one round and the start of the next."""
SWEEP_EVERY = 5.0
"""How often (s) the loop looks for profiles another worker stored but never evaluated."""
SWEEP_AGE_US = 5_000_000
"""A pending profile is taken over once it waited this long (its own worker had time)."""
SWEEP_CHUNK = 2_000
SWEEP_CHUNKS = 4


@dataclass
class RoundReport:
    """One round of the loop: profiles evaluated for timers and for new events, changes."""

    timer_profiles: int = 0
    event_profiles: int = 0
    entered: int = 0
    exited: int = 0
    waited: float | None = None
    """Seconds from the commit of the oldest event evaluated to the end of the round (None
    when the round evaluated no events handed over by ingest)."""
    timers_late_us: list[int] = field(default_factory=list)
    """How late each timer fired: the clock after its evaluation less its due instant."""

    @property
    def changed(self) -> bool:
        """Whether anything entered or left."""
        return bool(self.entered or self.exited)


class RealtimeLoop:
    """Evaluates profiles as their events are stored and as their timers come due."""

    def __init__(
        self,
        store: Store,
        processor: ProfileProcessor,
        clock: Callable[[], datetime],
        on_change: Callable[[], None] | None = None,
        identity: IdentityConfig | None = None,
    ) -> None:
        self.store = store
        self.realtime = realtime_for(store)
        self.identity = identity
        self.processor = processor
        self.index: RealtimeIndex = processor.index
        self.clock = clock
        self.on_change = on_change
        self.on_round: Callable[[RoundReport], None] | None = None
        self._queue: list[Message] = []
        self._queued_since: float | None = None  # monotonic time the oldest queued one came
        self._touched: dict[str, tuple[str, ...]] = {}  # message id → profiles, from ingest
        self._merged: set[str] = set()  # survivors of merges stored since the last round
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._swept_at = time.monotonic()
        self._cursor_moved = 0
        self.rounds = 0
        self.round_lock = threading.Lock()
        """Held for each round; whoever else holds it (a compute asked over the admin API)
        runs between two rounds."""

    # -- input --------------------------------------------------------------------------------
    def submit(self, messages: Sequence[Message], stored: IngestResult | None = None) -> None:
        """Queue the stored messages that may change a real-time audience (cheap, any thread).

        `stored` says which profiles each message touched, as ingest resolved them (else they
        are looked up in the store), and which survived a merge: those are evaluated whatever
        message made the merge."""
        relevant = [m for m in messages if self.index.relevant(m)]
        merged = stored.merged if stored is not None and self.index.active else frozenset()
        if not relevant and not merged:
            return
        with self._wake:
            if self._queued_since is None:
                self._queued_since = time.monotonic()
            self._queue.extend(relevant)
            self._merged.update(merged)
            if stored is not None and stored.profiles:
                for m in relevant:
                    touched = stored.profiles.get(m.message_id)
                    if touched is not None:
                        self._touched[m.message_id] = touched
            self._wake.notify()

    def catch_up(self, chunk: int = 5_000) -> int:
        """Evaluate what a restart may have missed; return how many profiles.

        After a crash: every profile received since the cursor (less a slack for commits that
        land out of receive order). On the very first start: every profile with an event the
        real-time segments read, so their timers exist (a batch compute sets no timers).
        """
        index = self.index
        if not index.active:
            return 0
        realtime = self.realtime
        cursor = realtime.cursor()
        now = to_micros(self.clock())
        since = 0 if cursor is None else cursor - CURSOR_SLACK_US
        profiles = realtime.profiles_received_since(since, index.events) if index.audiences else []
        for start in range(0, len(profiles), chunk):
            self.processor.process(profiles[start : start + chunk], now)
        # Members of `exits: realtime` audiences whose events arrived meanwhile are checked.
        evaluated = set(profiles)
        checks: list[str] = []
        if index.exit_audiences:
            received = realtime.profiles_received_since(since, index.exit_events)
            checks = [p for p in received if p not in evaluated]
        for start in range(0, len(checks), chunk):
            self.processor.process((), now, exits_only=checks[start : start + chunk])
        if cursor is None:
            realtime.set_cursor(now)
        return len(profiles) + len(checks)

    # -- one round ----------------------------------------------------------------------------
    def step(self, now_us: int | None = None) -> RoundReport:
        """Fire due timers (each at its instant), then evaluate queued profiles at now."""
        with self.round_lock:
            return self._round(now_us)

    def _round(self, now_us: int | None) -> RoundReport:
        with self._wake:
            queued, self._queue = self._queue, []
            touched, self._touched = self._touched, {}
            merged, self._merged = self._merged, set()
            since, self._queued_since = self._queued_since, None
        # The clock is read after the queue is taken, so every queued event was stored before.
        now_us = to_micros(self.clock()) if now_us is None else now_us
        report = RoundReport()
        try:
            self._fire_timers(now_us, report)
            self._sweep(now_us, report)
            if queued or merged:
                evaluated = [m for m in queued if self.index.evaluates(m)]
                checked = [m for m in queued if not self.index.evaluates(m)]
                profiles = sorted(set(self._profiles(evaluated, touched)) | merged)
                checks = self._profiles(checked, touched) if checked else []
                # Everything received up to the newest queued message is recorded with it.
                newest = max((m.received_at_us for m in queued), default=0)
                # The cursor may lag (a restart evaluates a little more again), never lead: it
                # moves with a recorded round, at most once per CURSOR_EVERY_US.
                moves = bool(queued) and newest - self._cursor_moved >= CURSOR_EVERY_US
                done = self.processor.process(
                    profiles, now_us, cursor_us=newest if moves else None, exits_only=checks
                )
                if moves:
                    self._cursor_moved = newest
        except BaseException:
            self._requeue(queued, touched, merged, since)  # evaluated again: none dropped
            raise
        if queued or merged:
            report.event_profiles += done.profiles
            report.entered += done.entered
            report.exited += done.exited
        if since is not None:
            report.waited = time.monotonic() - since
        self.rounds += 1
        if report.changed and self.on_change is not None:
            self.on_change()
        if self.on_round is not None:
            self.on_round(report)
        return report

    def backlog_age(self) -> float:
        """Seconds the oldest event handed over and not yet evaluated has waited (0 if none)."""
        with self._wake:
            since = self._queued_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def running(self) -> bool:
        """Whether the loop's thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def _fire_timers(self, now_us: int, report: RoundReport) -> None:
        while True:
            due = self.realtime.due_timers(now_us)
            if not due:
                return
            # Timers due within the same second are evaluated together at the latest of them:
            # one transaction per second of timers, exits recorded within a second of due.
            by_second: dict[int, list[tuple[str, int]]] = {}
            for profile_id, due_us in due:
                by_second.setdefault(due_us // 1_000_000, []).append((profile_id, due_us))
            for group in (by_second[k] for k in sorted(by_second)):
                at = max(due_us for _, due_us in group)
                profiles = [p for p, _ in group]
                done = self.processor.process(profiles, at)
                fired = to_micros(self.clock())
                report.timers_late_us.extend(fired - due_us for _, due_us in group)
                report.timer_profiles += done.profiles
                report.entered += done.entered
                report.exited += done.exited

    def _sweep(self, now_us: int, report: RoundReport) -> None:
        """Evaluate profiles left pending by a worker that died between storing and evaluating
        (only a store shared by several workers keeps them; others return none)."""
        if time.monotonic() - self._swept_at < SWEEP_EVERY:
            return
        self._swept_at = time.monotonic()
        for _ in range(SWEEP_CHUNKS):  # bounded: a round never turns into a backfill
            missed = self.realtime.pending(now_us - SWEEP_AGE_US, SWEEP_CHUNK)
            if missed:
                done = self.processor.process(missed, now_us)
                report.event_profiles += done.profiles
                report.entered += done.entered
                report.exited += done.exited
            if len(missed) < SWEEP_CHUNK:
                return

    def _requeue(
        self,
        queued: list[Message],
        touched: dict[str, tuple[str, ...]],
        merged: set[str],
        since: float | None,
    ) -> None:
        with self._wake:
            if since is not None:
                self._queued_since = min(since, self._queued_since or since)
            self._queue[:0] = queued
            self._touched.update(touched)
            self._merged.update(merged)

    def _profiles(
        self, messages: Sequence[Message], touched: Mapping[str, tuple[str, ...]]
    ) -> list[str]:
        """The profiles holding any identifier of the messages: the one each was stored under
        among them (an identify's email may name another profile than its anonymous id does,
        so with the project's `identity` the trait identifiers are looked up too). Ingest
        says so for what it stored; the others are looked up in the store."""
        found = {p for m in messages for p in touched.get(m.message_id, ())}
        keys: set[tuple[str, str]] = set()
        for m in messages:
            if m.message_id in touched:
                continue
            if self.identity is not None:
                keys.update(extract_identifiers(m, self.identity, IdentityChanges()))
            if m.user_id:
                keys.add(("user_id", m.user_id))
            if m.anonymous_id:
                keys.add(("anonymous_id", m.anonymous_id))
            if m.previous_id:
                keys.add(("user_id", m.previous_id))
                keys.add(("anonymous_id", m.previous_id))
        if keys:
            found.update(self.realtime.owners(keys).values())
        return sorted(found)

    # -- the thread ---------------------------------------------------------------------------
    def start(self) -> None:
        """Catch up after a restart, then run rounds in a background thread."""
        self.catch_up()
        self._thread = threading.Thread(target=self._run, name="cohortsync-realtime", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the round in progress and stop."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        ended = 0.0
        while True:
            with self._wake:
                if self._stop:
                    return
                if not self._queue:
                    self._wake.wait(timeout=self._idle_wait())
                if self._stop:
                    return
            # Under load, events arriving within ROUND_GAP of the last round join the next one:
            # fewer, larger rounds leave the store to ingest and delivery in between.
            gap = ROUND_GAP - (time.monotonic() - ended)
            if gap > 0:
                time.sleep(gap)
            try:
                self.step()
            except Exception:  # keep evaluating; the cursor makes the next round redo this one
                log.exception("real-time round failed; retrying")
                time.sleep(0.5)
            ended = time.monotonic()

    def _idle_wait(self) -> float:
        due = self.realtime.next_timer()
        if due is None:
            return IDLE_WAIT
        return max(0.0, min(IDLE_WAIT, (due - to_micros(self.clock())) / 1_000_000))
