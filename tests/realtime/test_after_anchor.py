"""Windows after an anchor event in real time: the anchor's event re-evaluates a profile, and the
wait before a non-converter enters is a timer."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from cohortsync.engine import Engine
from cohortsync.realtime.evaluation import ProfileProcessor
from cohortsync.realtime.index import build_index
from cohortsync.realtime.loop import RealtimeLoop
from tests.realtime.conftest import Clock, message

ANCHORED_YAML = """\
segments:
  converted_m1:
    event: order_completed
    after: {event: email_delivered, where: {campaign_id: cmp_welcome_1}}
    within: 1d
  nonconverter_m1:
    all:
      - {event: email_delivered, where: {campaign_id: cmp_welcome_1}, between: [7d, 1d]}
      - {not: {event: email_delivered, where: {campaign_id: cmp_welcome_1}, within: 1d}}
      - event: order_completed
        after: {event: email_delivered, where: {campaign_id: cmp_welcome_1}}
        within: 1d
        count: {eq: 0}
audiences:
  rt_converted_m1: {segment: converted_m1, refresh: realtime}
  rt_nonconverter_m1: {segment: nonconverter_m1, refresh: realtime}
"""


@pytest.fixture
def anchored_dir(project_on_both: Path) -> Path:
    """The project, once on DuckDB and once on Postgres."""
    path = project_on_both / "cohortsync.yml"
    path.write_text(path.read_text(encoding="utf-8") + ANCHORED_YAML, encoding="utf-8")
    return project_on_both


def loop_for(engine: Engine, clock: Clock, *audiences: str) -> RealtimeLoop:
    """The real-time loop of the project, or of only `audiences`."""
    project = engine.segments
    if audiences:
        project = replace(project, audiences={a: project.audiences[a] for a in audiences})
    index = build_index(project)
    processor = ProfileProcessor(engine.store, project, index, engine.sync_setup.routes)
    loop = RealtimeLoop(engine.store, processor, clock)
    engine.on_stored(loop.submit)
    return loop


def delivered(clock: Clock, campaign: str) -> dict[str, object]:
    return message(
        "track", "u1", clock.now, event="Email Delivered", properties={"campaign_id": campaign}
    )


def test_the_anchor_event_is_read_and_a_new_anchor_moves_the_window(
    anchored_dir: Path, clock: Clock
) -> None:
    """`converted_m1` reads deliveries only as its anchor: each one still re-evaluates it."""
    with Engine.open(anchored_dir) as engine:
        loop = loop_for(engine, clock, "rt_converted_m1")
        assert loop.index.events == {"order_completed", "email_delivered"}

        def members() -> int:
            loop.step()
            return len(engine.store.membership("segment", "converted_m1"))

        engine.ingest_messages([delivered(clock, "cmp_welcome_1")])
        assert members() == 0
        clock.now += timedelta(hours=1)
        engine.ingest_messages([message("track", "u1", clock.now, event="Order Completed")])
        assert members() == 1
        clock.now += timedelta(hours=1)
        engine.ingest_messages([delivered(clock, "cmp_newsletter_weekly")])
        assert members() == 1  # not message 1: the anchor stays
        clock.now += timedelta(hours=1)
        engine.ingest_messages([delivered(clock, "cmp_welcome_1")])
        assert members() == 0  # a new message 1: no order after it yet


def test_a_non_converter_enters_when_its_day_after_message_1_is_over(
    anchored_dir: Path, clock: Clock
) -> None:
    with Engine.open(anchored_dir) as engine:
        loop = loop_for(engine, clock)

        def members() -> int:
            loop.step()
            return len(engine.store.membership("audience", "rt_nonconverter_m1"))

        engine.ingest_messages([delivered(clock, "cmp_welcome_1")])
        assert members() == 0
        clock.now += timedelta(days=1)  # the timer of the wait is due
        assert members() == 1
        clock.now += timedelta(hours=1)
        engine.ingest_messages([delivered(clock, "cmp_welcome_1")])
        assert members() == 0  # a new message 1: a new wait
        clock.now += timedelta(hours=23)
        engine.ingest_messages([message("track", "u1", clock.now, event="Order Completed")])
        clock.now += timedelta(hours=1)
        assert members() == 0  # converted within the day after it
