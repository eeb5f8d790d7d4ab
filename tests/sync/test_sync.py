"""Planning and delivery: desired state reaches destinations exactly, whatever they answer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from cohortsync.engine import Engine
from cohortsync.errors import ConfigError
from cohortsync.sync.retry import RetryPolicy
from tests.conftest import PROJECT_YAML
from tests.sync.conftest import MIN, SYNC_YAML, T0, Clock, H, track
from tests.sync.scripted import Remote

AUDIENCE = "cio_cart_1h"


@pytest.fixture
def shop(shop_on_both: Engine) -> Engine:
    """Every test here holds on a DuckDB store and on a Postgres one."""
    return shop_on_both


def desired(engine: Engine, include_holdout: bool) -> dict[str, bool]:
    return {
        m.profile_id: bool(m.holdout)
        for m in engine.members(AUDIENCE)
        if include_holdout or not m.holdout
    }


def held(remote: Remote) -> dict[str, bool]:
    return {
        key.split("/", 1)[1]: value["holdout"]
        for key, value in remote.members.items()
        if key.startswith(AUDIENCE + "/")
    }


def carts(engine: Engine, people: range, at: object) -> None:
    engine.ingest_messages([track(n, "added_to_cart", at) for n in people])  # type: ignore[arg-type]


def test_compute_queues_changes_in_the_same_transaction(shop: Engine) -> None:
    carts(shop, range(10), T0)
    shop.compute(T0)
    rows = shop.store.query(  # type: ignore[attr-defined]
        "SELECT destination, count(*), count(*) FILTER (WHERE holdout) FROM outbox "
        "GROUP BY destination ORDER BY 1"
    )
    members = shop.members(AUDIENCE)
    held_out = sum(1 for m in members if m.holdout)
    assert 0 < held_out < len(members) == 10
    assert rows == [("ads", 10 - held_out, 0), ("wh", 10, held_out)]


def test_sync_brings_each_destination_to_its_desired_state(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    carts(shop, range(10), T0)
    shop.compute(T0)
    report = shop.sync(clock=clock, policy=policy)
    assert held(remotes["ads"]) == desired(shop, include_holdout=False)
    assert held(remotes["wh"]) == desired(shop, include_holdout=True)
    assert report.planned.total == 0  # compute had queued everything already
    ads = remotes["ads"].members
    assert all(v["identifiers"].get("email", "").startswith("person") for v in ads.values())
    status = {(s.destination, s.audience): s for s in shop.sync_status()}
    for name in ("ads", "wh"):
        line = status[(name, AUDIENCE)]
        assert line.desired == line.acknowledged > 0
        assert line.pending == line.dead_lettered == line.failed == 0
        assert line.match_rate == 1.0
    # The window closes: every member leaves both destinations.
    shop.compute(T0 + 2 * H)
    shop.sync(clock=clock, policy=policy)
    assert held(remotes["ads"]) == held(remotes["wh"]) == {}


def test_enter_then_exit_before_delivery_coalesces_to_nothing(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    carts(shop, range(5), T0)
    shop.compute(T0)
    shop.compute(T0 + 2 * H)
    assert shop.store.query("SELECT count(*) FROM outbox") == [(0,)]  # type: ignore[attr-defined]
    shop.sync(clock=clock, policy=policy)
    assert remotes["ads"].attempts == remotes["wh"].attempts == []


def test_a_remove_never_overtakes_the_add_it_follows(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    carts(shop, range(1), T0)
    shop.compute(T0)
    remotes["wh"].script = ["500"]
    shop.sync(destination="wh", clock=clock, policy=policy)  # the add is in flight, failing
    shop.compute(T0 + 2 * H)  # the profile leaves while its add waits for a retry
    clock.advance(H)
    shop.sync(destination="wh", clock=clock, policy=policy)
    profile = next(iter(desired_at(shop, T0)))
    assert [c for c in remotes["wh"].calls if c[2] == profile] == [
        ("add", AUDIENCE, profile),
        ("remove", AUDIENCE, profile),
    ]
    assert held(remotes["wh"]) == {}


def desired_at(engine: Engine, at: object) -> set[str]:
    return {m.profile_id for m in engine.members(AUDIENCE, at=at)}  # type: ignore[arg-type]


def test_retry_resends_the_same_batch_and_nothing_before_retry_after(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    carts(shop, range(10), T0)
    shop.compute(T0)
    ads = remotes["ads"]
    ads.script, ads.retry_after = ["429"], 120
    shop.sync(destination="ads", clock=clock, policy=policy)
    assert len(ads.attempts) == 1  # a failing destination gets nothing more this run
    first = ads.attempts[0]
    clock.advance(timedelta(seconds=119))
    shop.sync(destination="ads", clock=clock, policy=policy)
    assert len(ads.attempts) == 1  # Retry-After not yet expired
    clock.advance(timedelta(seconds=2))
    shop.sync(destination="ads", clock=clock, policy=policy)
    assert ads.attempts[1] == first  # same id, same records
    assert held(ads) == desired(shop, include_holdout=False)


def test_per_record_rejection_is_recorded_and_not_retried(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    carts(shop, range(10), T0)
    shop.compute(T0)
    members = sorted(desired(shop, include_holdout=False))
    remotes["ads"].reject = {members[0]: "invalid identifier"}
    shop.sync(destination="ads", clock=clock, policy=policy)
    before = len(remotes["ads"].attempts)
    shop.sync(destination="ads", clock=clock, policy=policy)
    assert len(remotes["ads"].attempts) == before
    line = next(s for s in shop.sync_status() if s.destination == "ads")
    assert (line.failed, line.acknowledged, line.pending) == (1, len(members) - 1, 0)
    reason = shop.store.query(  # type: ignore[attr-defined]
        "SELECT reason FROM destination_state WHERE status = 'rejected'"
    )
    assert reason == [("invalid identifier",)]


def test_refused_batch_goes_to_dead_letters_and_can_be_retried(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    carts(shop, range(2), T0)
    shop.compute(T0)
    remotes["wh"].script = ["400"]
    report = shop.sync(destination="wh", clock=clock, policy=policy)
    assert report.delivery.total("dead_lettered") == 2
    line = next(s for s in shop.sync_status() if s.destination == "wh")
    assert (line.dead_lettered, line.acknowledged, line.pending) == (2, 0, 0)
    shop.sync(destination="wh", clock=clock, policy=policy)
    assert held(remotes["wh"]) == {}  # dead letters are not re-sent on their own
    assert shop.retry_dead(destination="wh") == 2
    shop.sync(destination="wh", clock=clock, policy=policy)
    assert held(remotes["wh"]) == desired(shop, include_holdout=True)


def fail_for(
    shop: Engine, remote: Remote, clock: Clock, policy: RetryPolicy, span: timedelta
) -> None:
    """The destination answers 500 while the clock moves through `span`, syncing every 15 min."""
    remote.script = ["500"] * 1000
    end = clock.now + span
    while clock.now < end:
        clock.advance(15 * MIN)
        shop.sync(destination="wh", clock=clock, policy=policy)
    remote.script = []


def test_adds_give_up_after_the_retry_window(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    carts(shop, range(1), T0)
    shop.compute(T0)
    fail_for(shop, remotes["wh"], clock, policy, 2 * H)  # the window is 1 h
    dead = shop.store.query("SELECT op, reason FROM dead_letters")  # type: ignore[attr-defined]
    assert len(dead) == 1 and dead[0][0] == "add" and "gave up after" in dead[0][1]
    assert shop.store.query("SELECT count(*) FROM outbox") == [(0,)]  # type: ignore[attr-defined]


def test_exits_are_retried_for_as_long_as_it_takes(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    carts(shop, range(1), T0)
    shop.compute(T0)
    shop.sync(destination="wh", clock=clock, policy=policy)
    assert len(held(remotes["wh"])) == 1
    shop.compute(T0 + 3 * H)  # u0 leaves
    fail_for(shop, remotes["wh"], clock, policy, 10 * H)
    assert shop.store.query("SELECT count(*) FROM dead_letters") == [(0,)]  # type: ignore[attr-defined]
    assert shop.store.query("SELECT op FROM outbox") == [("remove",)]  # type: ignore[attr-defined]
    clock.advance(H)
    shop.sync(destination="wh", clock=clock, policy=policy)
    assert held(remotes["wh"]) == {}


def test_auth_failure_pauses_the_destination_and_keeps_its_queue(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    carts(shop, range(10), T0)
    shop.compute(T0)
    remotes["ads"].script = ["401"]
    report = shop.sync(destination="ads", clock=clock, policy=policy)
    tally = report.delivery.tally("ads", AUDIENCE)
    assert tally.error is not None and tally.error.startswith("paused")
    line = next(s for s in shop.sync_status() if s.destination == "ads")
    assert line.pending == len(desired(shop, include_holdout=False))
    assert line.last_error is not None and "401" in line.last_error
    clock.advance(timedelta(seconds=301))
    shop.sync(destination="ads", clock=clock, policy=policy)
    assert held(remotes["ads"]) == desired(shop, include_holdout=False)


def test_conversions_are_forwarded_once_each(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    shop.ingest_messages(
        [track(n, "order_completed", T0, revenue=10.0 * n) for n in range(4)]
        + [track(9, "added_to_cart", T0)]
    )
    shop.sync(clock=clock, policy=policy)
    shop.sync(clock=clock, policy=policy)
    sent = remotes["ads"].conversions
    assert len(sent) == 4
    assert {v["value"] for v in sent.values()} == {0.0, 10.0, 20.0, 30.0}
    assert {v["name"] for v in sent.values()} == {"Purchase"}
    assert {v["currency"] for v in sent.values()} == {"USD"}
    assert len(remotes["ads"].attempts) == 2  # 4 conversions in batches of at most 3
    line = next(s for s in shop.sync_status() if s.audience is None)
    assert (line.desired, line.acknowledged, line.pending) == (4, 4, 0)


def test_dry_run_writes_requests_and_changes_nothing(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    carts(shop, range(10), T0)
    shop.compute(T0)
    report = shop.sync(dry_run=True, clock=clock, policy=policy)
    assert report.dry_run_folder is not None
    files = sorted(report.dry_run_folder.rglob("*.json"))
    assert files
    written = [orjson.loads(f.read_bytes()) for f in files if f.parent.name == "wh"]
    assert sum(w["records"] for w in written) == 10
    assert remotes["ads"].attempts == remotes["wh"].attempts == []
    status = shop.sync_status()
    assert all(s.acknowledged == 0 for s in status)
    shop.sync(clock=clock, policy=policy)
    assert held(remotes["wh"]) == desired(shop, include_holdout=True)


def test_sync_runs_are_logged(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    carts(shop, range(3), T0)
    shop.compute(T0)
    shop.sync(clock=clock, policy=policy)
    run = shop.sync_runs()[0]
    assert run.acknowledged == 3 + len(desired(shop, include_holdout=False))
    assert run.duration_ms > 0 and not run.dry_run


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("destinations: [ads, wh]", None),
        ("destinations: [ads, nope]", "unknown destination 'nope'"),
    ],
)
def test_audiences_must_name_defined_destinations(
    project_dir: Path, change: str, message: str | None
) -> None:
    text = PROJECT_YAML + SYNC_YAML.replace("destinations: [ads, wh]", change)
    (project_dir / "cohortsync.yml").write_text(text, encoding="utf-8")
    with Engine.open(project_dir) as engine:
        if message is None:
            assert len(engine.sync_setup.routes) == 2
            return
        with pytest.raises(ConfigError) as caught:
            _ = engine.sync_setup
    line = text.splitlines().index("    " + change) + 1
    assert caught.value.line == line
    assert message in str(caught.value)


def test_unknown_destination_type_names_the_known_ones(project_dir: Path) -> None:
    text = PROJECT_YAML + "destinations:\n  x: {type: facebook}\n"
    (project_dir / "cohortsync.yml").write_text(text, encoding="utf-8")
    with Engine.open(project_dir) as engine, pytest.raises(ConfigError) as caught:
        _ = engine.sync_setup
    assert "unknown type 'facebook'" in str(caught.value)
    assert "meta_custom_audience" in str(caught.value)
    assert caught.value.line == text.splitlines().index("  x: {type: facebook}") + 1


def test_a_record_failing_alone_is_retried_alone(
    shop: Engine, remotes: dict[str, Remote], clock: Clock, policy: RetryPolicy
) -> None:
    carts(shop, range(10), T0)
    shop.compute(T0)
    wh = remotes["wh"]
    flaky = sorted(desired(shop, include_holdout=True))[:2]
    wh.flaky = set(flaky)
    report = shop.sync(destination="wh", clock=clock, policy=policy)
    assert report.delivery.total("retrying") == 2
    assert set(held(wh)) == set(desired(shop, include_holdout=True)) - set(flaky)
    shop.sync(destination="wh", clock=clock, policy=policy)  # not due yet: backoff
    assert len(wh.attempts) == 1
    clock.advance(timedelta(seconds=11))
    shop.sync(destination="wh", clock=clock, policy=policy)
    assert held(wh) == desired(shop, include_holdout=True)
    sent = [p for _, _, p in wh.calls]
    assert sorted(sent) == sorted(desired(shop, include_holdout=True))  # accepted never resent
    assert len(wh.attempts[-1][1]) == 2  # the retry carried only the two failed records
