"""Real-time membership equals batch membership at every checkpoint, timers included.

A generated event stream (carts, orders, views, identifies with traits and emails) is replayed
in time order through the real-time path on a test clock: each event is stored, then the loop
runs a round at the event's time (firing every timer due before it). At checkpoints between
events the loop fires due timers only, and every real-time audience and segment must hold
exactly the profiles `compute` finds for that instant.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cohortsync.audiences.compute import compute_members
from cohortsync.engine import Engine
from cohortsync.events.timestamps import to_micros
from cohortsync.realtime.loop import RealtimeLoop
from tests.realtime.conftest import REALTIME_YAML, T0, Clock, message

PEOPLE = 14


@pytest.fixture
def realtime_dir(project_on_both: Path) -> Path:
    """The real-time project, once on DuckDB and once on Postgres."""
    path = project_on_both / "cohortsync.yml"
    path.write_text(path.read_text(encoding="utf-8") + REALTIME_YAML, encoding="utf-8")
    return project_on_both


def stream(seed: int) -> list[tuple[datetime, dict[str, Any]]]:
    """Three simulated days of shop events for a handful of people, in time order."""
    rng = random.Random(seed)
    out: list[tuple[datetime, dict[str, Any]]] = []
    for _ in range(160):
        t = T0 + timedelta(minutes=rng.randrange(0, 3 * 24 * 60))
        user = f"u{rng.randrange(PEOPLE)}"
        roll = rng.random()
        if roll < 0.35:
            out.append((t, message("track", user, t, event="Added To Cart")))
        elif roll < 0.55:
            revenue = rng.choice([20, 45, 80, 130])
            out.append(
                (
                    t,
                    message(
                        "track", user, t, event="Order Completed", properties={"revenue": revenue}
                    ),
                )
            )
        elif roll < 0.85:
            out.append((t, message("track", user, t, event="Product Viewed")))
        elif roll < 0.93:
            out.append((t, message("track", user, t, event="Page Loaded")))  # unrelated
        else:
            traits: dict[str, Any] = {"tier": rng.choice(["vip", "regular"])}
            if rng.random() < 0.6:
                traits["email"] = f"{user}@example.com"
            out.append((t, message("identify", user, t, traits=traits)))
    out.sort(key=lambda item: item[0])
    return out


def check(engine: Engine, loop: RealtimeLoop, moment: datetime) -> None:
    at_us = to_micros(moment)
    batch = compute_members(engine.store, engine.segments, at_us)
    for kind, name in loop.index.scope:
        realtime = {p for p, _ in engine.store.membership(kind, name)}
        expected = batch.ids(kind, name)
        assert realtime == expected, f"{kind} {name} at {moment.isoformat()}"
    for name in loop.index.audiences:
        flags = dict(engine.store.membership("audience", name))
        assert flags == dict(batch.audiences[name]), f"holdout flags of {name}"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_realtime_equals_batch_at_every_checkpoint(
    live: tuple[Engine, RealtimeLoop], clock: Clock, seed: int
) -> None:
    engine, loop = live
    events = stream(seed)
    checkpoints = [T0 + timedelta(minutes=67 * k) for k in range(1, 4 * 24 * 60 // 67)]
    fired = 0
    for moment, raw in events:
        while checkpoints and checkpoints[0] < moment:
            point = checkpoints.pop(0)
            clock.now = point
            fired += loop.step().timer_profiles
            check(engine, loop, point)
        clock.now = moment
        engine.ingest_messages([raw])
        loop.step()
    for point in checkpoints:
        clock.now = point
        fired += loop.step().timer_profiles
        check(engine, loop, point)
    assert fired > 0  # windows closed by timers, not only by new events


def test_an_unrelated_event_evaluates_nothing(
    live: tuple[Engine, RealtimeLoop], clock: Clock
) -> None:
    engine, loop = live
    engine.ingest_messages([message("track", "u1", clock.now, event="Page Loaded")])
    assert loop.step().event_profiles == 0
    engine.ingest_messages([message("track", "u1", clock.now, event="Added To Cart")])
    assert loop.step().event_profiles == 1


def test_an_event_dated_after_the_evaluation_counts_from_its_timestamp(
    live: tuple[Engine, RealtimeLoop], clock: Clock
) -> None:
    """A purchase stamped ahead of the server's clock (a client clock ahead, or an event stored
    while a round read the clock) is evaluated again at its own timestamp, not forgotten."""
    engine, loop = live
    engine.ingest_messages([message("track", "u1", clock.now, event="Added To Cart")])
    loop.step()
    assert len(engine.store.membership("audience", "rt_cart_abandon_6h")) == 1
    ahead = clock.now + timedelta(seconds=2)
    engine.ingest_messages(
        [message("track", "u1", ahead, event="Order Completed", properties={"revenue": 5})]
    )
    loop.step()  # at the server's now the purchase does not exist yet
    assert engine.store.membership("audience", "rt_purchase_suppress") == []
    clock.now = ahead + timedelta(milliseconds=1)
    assert loop.step().timer_profiles == 1
    assert len(engine.store.membership("audience", "rt_purchase_suppress")) == 1
    assert engine.store.membership("audience", "rt_cart_abandon_6h") == []
    check(engine, loop, clock.now)


def test_an_identify_whose_email_names_another_profile_evaluates_that_profile(
    realtime_dir: Path, clock: Clock
) -> None:
    """A shared device: visitor anon-1 was identified as u1 with ann's email; someone else then
    identifies on it with another email and no user id. The email limit keeps that email apart,
    in a profile of its own, which `serve` must evaluate at once (it used to look up only the
    message's user and anonymous ids, which name u1's profile)."""
    device = {"anonymousId": "anon-1"}
    with Engine.open(realtime_dir) as engine:
        workers = engine.serve_workers(clock)
        try:
            engine.ingest_messages(
                [{**message("identify", "u1", clock.now, traits={"email": "ann@x.com"}), **device}]
            )
            workers.loop.step()
            other = {**message("identify", "", clock.now, traits={"email": "bo@x.com"}), **device}
            del other["userId"]
            engine.ingest_messages([other])
            workers.loop.step()
            assert len(engine.store.membership("audience", "rt_emailable")) == 2
            check(engine, workers.loop, clock.now)
        finally:
            workers.delivery.close()
