"""Timers outlive the process; scheduled refreshes run on cadence and leave real time alone."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from cohortsync.engine import Engine
from cohortsync.moments import to_micros
from cohortsync.realtime.cadence import CadenceScheduler
from cohortsync.realtime.evaluation import ProfileProcessor
from cohortsync.realtime.index import build_index
from cohortsync.realtime.loop import RealtimeLoop
from tests.realtime.conftest import REALTIME_YAML, Clock, message


@pytest.fixture
def realtime_dir(project_on_both: Path) -> Path:
    """The real-time project, once on DuckDB and once on Postgres."""
    path = project_on_both / "cohortsync.yml"
    path.write_text(path.read_text(encoding="utf-8") + REALTIME_YAML, encoding="utf-8")
    return project_on_both


def loop_for(engine: Engine, clock: Clock) -> RealtimeLoop:
    index = build_index(engine.segments)
    processor = ProfileProcessor(engine.store, engine.segments, index, engine.sync_setup.routes)
    loop = RealtimeLoop(engine.store, processor, clock)
    engine.on_stored(loop.submit)
    return loop


def test_a_timer_set_before_a_restart_fires_after_it(realtime_dir: Path, clock: Clock) -> None:
    with Engine.open(realtime_dir) as engine:
        loop = loop_for(engine, clock)
        engine.ingest_messages([message("track", "u1", clock.now, event="Added To Cart")])
        loop.step()
        assert len(engine.store.membership("segment", "cart_6h")) == 1
    clock.now += timedelta(hours=6, seconds=1)
    with Engine.open(realtime_dir) as engine:  # a new process: only the stored timer knows
        report = loop_for(engine, clock).step()
        assert report.timer_profiles == 1
        assert engine.store.membership("segment", "cart_6h") == []
        assert engine.store.membership("audience", "rt_cart_abandon_6h") == []


def test_cadence_refreshes_due_audiences_and_reports_last_and_next_run(
    realtime_dir: Path, clock: Clock
) -> None:
    with Engine.open(realtime_dir) as engine:
        loop = loop_for(engine, clock)
        engine.ingest_messages(
            [
                message("identify", "u1", clock.now, traits={"tier": "vip"}),
                message("track", "u2", clock.now, event="Added To Cart"),
            ]
        )
        loop.step()
        index = build_index(engine.segments)
        scheduler = CadenceScheduler(engine.store, engine.segments, index, ())
        [nightly] = [s for s in scheduler.schedules() if s.audience == "nightly_vip"]
        assert (nightly.last_run_us, nightly.next_run_us) == (None, 0)  # never run: due now
        assert all(s.next_run_us is None for s in scheduler.schedules() if s.refresh == "realtime")
        realtime_before = engine.store.membership("audience", "rt_cart_abandon_6h")

        now = to_micros(clock.now)
        report = scheduler.run_due(now)
        assert report is not None and report.row("nightly_vip").size == 1
        assert scheduler.run_due(now) is None  # not due again until a day later
        [nightly] = [s for s in scheduler.schedules() if s.audience == "nightly_vip"]
        assert nightly.last_run_us == now
        assert nightly.next_run_us == now + 24 * 3_600_000_000
        assert engine.store.membership("audience", "rt_cart_abandon_6h") == realtime_before
        # `vip` is also read by a real-time audience (rt_browse excludes it): real time keeps it.
        assert {r.name for r in report.rows} == {"nightly_vip"}
