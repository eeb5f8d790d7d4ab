"""Timers are leased when taken, on the one-writer DuckDB store as on Postgres: a round that
fails before recording leaves its timers hidden until the lease runs out, then they fire again;
recording a profile replaces its timers and ends the lease."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohortsync.engine import Engine
from cohortsync.events.timestamps import to_micros
from cohortsync.store.realtime import ProfileOutcome
from cohortsync.sync.realtime_state import TIMER_LEASE, realtime_for
from tests.realtime.conftest import REALTIME_YAML, T0


@pytest.fixture
def realtime_dir(project_on_both: Path) -> Path:
    path = project_on_both / "cohortsync.yml"
    path.write_text(path.read_text(encoding="utf-8") + REALTIME_YAML, encoding="utf-8")
    return project_on_both


def test_a_taken_timer_is_hidden_until_recorded_or_its_lease_runs_out(realtime_dir: Path) -> None:
    now = to_micros(T0)
    lease_over = now + int(TIMER_LEASE.total_seconds() * 1_000_000) + 1
    with Engine.open(realtime_dir) as engine:
        realtime = realtime_for(engine.store)
        outcomes = [ProfileOutcome(p, {}, {"cart_6h": now - 1_000}) for p in ("p1", "p2")]
        realtime.record_profiles(outcomes, [], now - 10**9, [])
        assert realtime.next_timer() == now - 1_000

        assert dict(realtime.due_timers(now)) == {"p1": now - 1_000, "p2": now - 1_000}
        assert realtime.due_timers(now) == []  # taken: not handed out twice
        assert realtime.next_timer() is None  # and not waited for

        # p1's round recorded it (no timer left); p2's round failed before recording.
        realtime.record_profiles([ProfileOutcome("p1", {}, {})], [], now, [])
        assert realtime.due_timers(now + 1) == []
        assert realtime.due_timers(lease_over) == [("p2", now - 1_000)]
