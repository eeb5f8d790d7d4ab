"""Scheduled refreshes: audiences with `refresh: 15m | 1h | 1d | cron` recomputed in batch on time.

An audience never computed on schedule is due at once. A due set is computed together in one
scoped run: the due audiences, and the segments they need that the real-time path does not
keep (real-time names are never overwritten by a batch run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from cronsim import CronSim

from cohortsync.audiences.compute import ComputeReport, compute
from cohortsync.moments import to_datetime, to_micros
from cohortsync.realtime.index import REALTIME, RealtimeIndex
from cohortsync.segments.ast import SegmentProject
from cohortsync.store.base import Store
from cohortsync.store.outbox import Route
from cohortsync.sync.realtime_state import realtime_for

EVERY = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "1d": timedelta(days=1)}


def next_run(refresh: str, last_us: int | None) -> int | None:
    """When an audience with this cadence runs next (µs); None for real-time audiences."""
    if refresh == REALTIME:
        return None
    if last_us is None:
        return 0
    last = to_datetime(last_us)
    if refresh in EVERY:
        return to_micros(last + EVERY[refresh])
    return to_micros(next(iter(CronSim(refresh, last))))


@dataclass(frozen=True)
class Schedule:
    """One audience's cadence: when it last ran on schedule and when it runs next."""

    audience: str
    refresh: str
    last_run_us: int | None
    next_run_us: int | None


class CadenceScheduler:
    """Finds audiences due for a scheduled refresh and computes them."""

    def __init__(
        self,
        store: Store,
        project: SegmentProject,
        index: RealtimeIndex,
        routes: Sequence[Route],
    ) -> None:
        self.store = store
        self.project = project
        self.index = index
        self.routes = routes
        self.realtime = realtime_for(store)

    def schedules(self) -> list[Schedule]:
        """Every audience's cadence, last and next run."""
        runs = self.realtime.audience_runs()
        return [
            Schedule(name, a.refresh, runs.get(name), next_run(a.refresh, runs.get(name)))
            for name, a in sorted(self.project.audiences.items())
        ]

    def run_due(self, now_us: int) -> ComputeReport | None:
        """Compute every audience whose next run has come; None when none has."""
        due = [
            s.audience
            for s in self.schedules()
            if s.next_run_us is not None and s.next_run_us <= now_us
        ]
        if not due:
            return None
        realtime_segments = set(self.index.segments)
        segments: set[str] = set()
        for name in due:
            audience = self.project.audiences[name]
            segments |= {audience.segment, *audience.exclude}
        scope = [("audience", a) for a in due] + [
            ("segment", s) for s in sorted(segments - realtime_segments)
        ]
        routes = [r for r in self.routes if r.audience in due]
        report = compute(self.store, self.project, now_us, routes=routes, scope=scope)
        assert report.run_id is not None  # `compute` records, or raises
        self.realtime.record_audience_runs(due, now_us, report.run_id)
        return report
