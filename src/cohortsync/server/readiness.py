"""`/ready`: whether this process can take traffic now (`/health` says only that it answers).

Ready means: startup finished (the real-time catch-up included) and shutdown has not begun;
the store answers a trivial query, or in the ingest role the bus answers a round trip; and
the background threads, where this process runs them, are alive. A check that hangs (a store
locked by a long write) counts as not ready after CHECK_TIMEOUT; at most one check runs at
a time, so a probe every few seconds cannot pile threads up.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from cohortsync.engine import Engine, ServeWorkers
from cohortsync.identity.log_scrub import scrubbed_logger

log = scrubbed_logger("cohortsync.server")
CHECK_TIMEOUT = 2.0
"""Seconds the store or the bus has to answer a readiness check."""


class Pingable(Protocol):
    """What ingest commits to (the engine's store, or the bus), able to answer a round trip."""

    def ping(self) -> None: ...


class Readiness:
    """What `/ready` checks for one app: its store or bus, and its workers."""

    def __init__(self, target: Pingable) -> None:
        self.started = False
        self.workers: ServeWorkers | None = None
        store = isinstance(target, Engine)
        self._what, self._failed = ("store", "cannot be read") if store else ("bus", "unreachable")
        self._check = target.ping
        self._running: asyncio.Future[None] | None = None

    async def problems(self) -> list[str]:
        """What is not ready, one line each; empty when ready."""
        if not self.started:
            return ["starting: startup has not finished (or shutdown has begun)"]
        problem = await self._dependency_problem()
        found = [] if problem is None else [problem]
        if self.workers is not None:
            stopped = self.workers.not_running()
            found.extend(f"{name}: its thread is not running" for name in stopped)
        return found

    async def _dependency_problem(self) -> str | None:
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().run_in_executor(None, self._check)
            self._running.add_done_callback(_retrieved)
        try:
            await asyncio.wait_for(asyncio.shield(self._running), CHECK_TIMEOUT)
        except TimeoutError:
            return f"{self._what}: no answer within {CHECK_TIMEOUT:g} s"
        except Exception as exc:
            log.warning("not ready: %s: %s: %s", self._what, type(exc).__name__, exc)
            return f"{self._what}: {self._failed} ({type(exc).__name__}; the server log says why)"
        return None


def _retrieved(future: asyncio.Future[None]) -> None:
    """Mark the outcome read, so a check that failed after its probe gave up logs no warning."""
    if not future.cancelled():
        future.exception()
