"""The event bus: every implementation (in-process, Redis Streams, NATS JetStream) keeps the
same promises: every field survives, a key's messages stay in order, a group's consumers split
the partitions, and what a consumer took but never acked goes to another one.

Redis and NATS tests run against the servers on 127.0.0.1 and skip when one does not answer.
Every test uses its own prefix and drops it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cohortsync.realtime.bus import (
    Bus,
    BusError,
    BusMessage,
    decode,
    encode,
    open_bus,
    partition_for,
    partition_key,
)
from cohortsync.realtime.bus_group import rebalance
from cohortsync.realtime.bus_nats import NatsBus
from cohortsync.realtime.bus_redis import RedisBus
from cohortsync.store.records import Message
from tests.conftest import free_port
from tests.realtime.bus_fixtures import URLS, collect, ids, message, unreachable

MakeBus = Callable[..., Bus]
ROOT = Path(__file__).resolve().parents[2]


def _bus_factory(kind: str) -> Iterator[MakeBus]:
    reason = unreachable(kind)
    if reason:
        pytest.skip(reason)
    prefix = f"cstest-{uuid.uuid4().hex[:12]}"
    opened: list[Bus] = []

    def make(partitions: int = 4, visibility: float = 1.0) -> Bus:
        bus = open_bus(URLS[kind], prefix, partitions, visibility)
        opened.append(bus)
        return bus

    yield make
    for bus in opened:
        with contextlib.suppress(BusError):
            bus.drop()
        bus.close()


@pytest.fixture(params=["memory", "redis", "nats"])
def make_bus(request: pytest.FixtureRequest) -> Iterator[MakeBus]:
    """Opens a bus of the parametrised kind on a fresh prefix; drops it afterwards."""
    yield from _bus_factory(request.param)


@pytest.fixture(params=["redis", "nats"])
def make_server_bus(request: pytest.FixtureRequest) -> Iterator[MakeBus]:
    """Like `make_bus`, for the buses that live in a server (and outlive a process)."""
    yield from _bus_factory(request.param)


def everything(count: int) -> Callable[[dict[str, list[BusMessage]]], bool]:
    """Until: `count` distinct messages were received, by any consumer."""
    return lambda got: len({d.message.message_id for ds in got.values() for d in ds}) >= count


def wait_backlog_empty(bus: Bus, group: str) -> None:
    """The group's backlog reaches zero (acks are processed asynchronously by some servers)."""
    collect([], lambda _: bus.backlog(group) == 0, limit=10)


# -- every field, every partition --------------------------------------------------------------
def test_round_trip_keeps_every_field_and_partition(make_bus: MakeBus) -> None:
    bus = make_bus(partitions=8)
    full = Message(
        message_id="msg-full-1",
        type="identify",
        source="backend",
        timestamp_us=1_775_034_000_123_456,
        original_timestamp_us=1_775_034_000_000_001,
        received_at_us=1_775_034_000_999_999,
        sent_at_us=1_775_034_000_500_000,
        event=None,
        event_key=None,
        name="Checkout",
        user_id="user-ü-1",
        anonymous_id="anon-1",
        previous_id="prev-1",
        group_id="grp-1",
        properties={"price": 19.99, "qty": 3, "tags": ["a", "b"], "gift": False, "note": None},
        traits={"name": "Zoë 🎉", "ltv": 1234.5, "nested": {"deep": {"x": [1, 2.5, "three"]}}},
        context={"ip": "203.0.113.9", "library": {"name": "analytics-python", "version": "2.3"}},
        integrations={"All": True, "Mixpanel": False},
    )
    sparse = Message("msg-sparse-1", "page", "web", 1, 2, 3, anonymous_id="anon-only")
    others = [message(i, user=f"u{i % 13}") for i in range(200)]
    published = [full, sparse, *others]
    bus.publish(published)
    assert bus.backlog("g") == len(published)

    with bus.consumer("g", "solo") as consumer:
        got = collect([consumer], everything(len(published)))["solo"]

    assert sorted(d.message for d in got) == sorted(published)
    assert {d.message.message_id: d.message for d in got}["msg-full-1"] == full
    for delivery in got:
        assert delivery.partition == partition_for(partition_key(delivery.message), 8)
    assert len(set(ids(got))) == len(got)
    wait_backlog_empty(bus, "g")


def test_codec_refuses_what_it_did_not_write() -> None:
    m = message(1, user="u")
    assert decode(encode(m)) == m
    for bad in (b"[1, 2]", b'{"message_id": "x", "unknown": 1}', b"not json"):
        with pytest.raises(ValueError):
            decode(bad)


def test_partitioning_is_stable_and_prefers_user_id() -> None:
    both = message(1, user="user-42", anonymous="anon-9")
    anonymous = message(2, anonymous="anon-9")
    assert partition_key(both) == "user-42"
    assert partition_key(anonymous) == "anon-9"
    # Fixed values: a change here would send a key's new messages to another partition.
    assert partition_for("user-42", 16) == 3
    assert partition_for("anon-9", 16) == 8


# -- order ----------------------------------------------------------------------------------
def test_each_key_keeps_its_order_under_concurrent_publishers(make_bus: MakeBus) -> None:
    bus = make_bus(partitions=4)
    publishers, keys_each, per_key = 4, 6, 40
    failures: list[BaseException] = []

    def publish(worker: int) -> None:
        rng = random.Random(worker)
        keys = [f"p{worker}-k{k}" for k in range(keys_each)]
        queue = [(key, seq) for seq in range(per_key) for key in keys]
        try:
            while queue:
                size = rng.randint(1, 25)
                batch, queue = queue[:size], queue[size:]
                bus.publish(
                    [
                        message(seq, user=key) if k % 2 else message(seq, anonymous=key)
                        for k, (key, seq) in enumerate(batch)
                    ]
                )
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=publish, args=(w,)) for w in range(publishers)]
    for thread in threads:
        thread.start()
    with bus.consumer("g", "reader") as consumer:
        got = collect([consumer], everything(publishers * keys_each * per_key), batch=37)
    for thread in threads:
        thread.join()
    assert not failures

    by_key: dict[str, list[int]] = {}
    for delivery in got["reader"]:
        m = delivery.message
        assert m.properties is not None
        by_key.setdefault(partition_key(m), []).append(m.properties["seq"])
    assert len(by_key) == publishers * keys_each
    for key, seqs in by_key.items():
        assert seqs == list(range(per_key)), f"{key} arrived out of order: {seqs}"


# -- groups -----------------------------------------------------------------------------------
def test_two_consumers_of_a_group_split_partitions_without_overlap(make_bus: MakeBus) -> None:
    bus = make_bus(partitions=4, visibility=2.0)
    first, second = bus.consumer("g", "first"), bus.consumer("g", "second")

    def settled(_: Any) -> bool:
        a, b = first.partitions, second.partitions
        return bool(a) and bool(b) and not a & b and a | b == {0, 1, 2, 3}

    collect([first, second], settled)
    published = [message(i, user=f"user-{i % 50}") for i in range(600)]
    bus.publish(published)
    got = collect([first, second], everything(len(published)))

    all_ids = ids(got["first"]) + ids(got["second"])
    assert sorted(all_ids) == sorted(m.message_id for m in published)  # each exactly once
    assert got["first"] and got["second"]
    first_parts = {d.partition for d in got["first"]}
    second_parts = {d.partition for d in got["second"]}
    assert not first_parts & second_parts
    # Another group reads the same messages independently.
    with bus.consumer("other", "solo") as other:
        again = collect([other], everything(len(published)))["solo"]
    assert sorted(ids(again)) == sorted(all_ids)
    first.close()
    second.close()
    wait_backlog_empty(bus, "g")


def test_unacked_messages_of_an_abandoned_consumer_go_to_another(make_bus: MakeBus) -> None:
    bus = make_bus(partitions=4, visibility=2.0)
    published = [message(i, user=f"user-{i % 20}") for i in range(400)]
    bus.publish(published)
    gone = bus.consumer("g", "gone")
    acked = collect([gone], lambda got: len(got["gone"]) >= 60)["gone"]
    unacked = collect([gone], lambda got: len(got["gone"]) >= 40, ack=False)["gone"]
    # `gone` stops here: no ack, no close, no more fetches (a hung or dead worker).

    with bus.consumer("g", "heir") as heir:
        rest = collect([heir], lambda got: set(ids(got["heir"])) >= set(ids(unacked)))["heir"]
        rest += collect(
            [heir],
            lambda got: (
                len(set(ids(acked)) | set(ids(rest)) | set(ids(got["heir"]))) >= len(published)
            ),
        )["heir"]

    assert set(ids(acked)) | set(ids(rest)) == {m.message_id for m in published}
    assert set(ids(unacked)) <= set(ids(rest))
    assert not set(ids(acked)) & set(ids(rest))  # acked ones never come back
    for key, seqs in _seqs_by_key(rest).items():
        assert seqs == sorted(set(seqs)), f"{key} redelivered out of order: {seqs}"
    wait_backlog_empty(bus, "g")


def test_closing_hands_unacked_messages_over_without_waiting(make_bus: MakeBus) -> None:
    """With a 30 s visibility timeout, unacked messages are redelivered after 15 s at the
    earliest, unless the close gives them back: the new consumer has them within 10 s."""
    bus = make_bus(partitions=4, visibility=30.0)
    published = [message(i, user=f"user-{i % 10}") for i in range(200)]
    bus.publish(published)
    leaving = bus.consumer("g", "leaving")
    held = collect([leaving], lambda got: len(got["leaving"]) >= 50, ack=False)["leaving"]
    leaving.close()
    with bus.consumer("g", "staying") as staying:
        got = collect([staying], everything(len(published)), limit=10)["staying"]
    assert set(ids(held)) <= set(ids(got))
    assert {m.message_id for m in published} == set(ids(got))
    with pytest.raises(BusError, match="closed"):
        leaving.fetch()


def test_nacked_deliveries_come_back_first_and_in_order(make_bus: MakeBus) -> None:
    """A worker whose batch failed gives it back; the retry sees the key's messages in order."""
    bus = make_bus(partitions=2)
    published = [message(i, user="one-person") for i in range(60)]
    bus.publish(published)
    with bus.consumer("g", "worker") as consumer:
        failed = collect([consumer], lambda got: len(got["worker"]) >= 20, ack=False, batch=20)
        consumer.nack([d.id for d in failed["worker"]])
        retried = collect([consumer], everything(len(published)))["worker"]
    assert [d.message for d in retried] == published
    wait_backlog_empty(bus, "g")


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals (kill -9)")
def test_a_killed_consumer_loses_nothing(make_server_bus: MakeBus) -> None:
    bus = make_server_bus(partitions=4, visibility=2.0)
    published = [message(i, user=f"user-{i % 30}") for i in range(300)]
    bus.publish(published)
    prefix = bus.prefix
    url = URLS["redis"] if isinstance(bus, RedisBus) else URLS["nats"]
    command = [sys.executable, "-m", "tests.realtime.bus_fixtures", url, prefix]
    command += ["4", "2.0", "g", "victim", "100"]  # partitions, visibility, group, name, want
    victim = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert victim.stdout is not None
        taken = victim.stdout.readline().split()
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    assert len(taken) >= 100

    with bus.consumer("g", "survivor") as survivor:
        got = collect([survivor], everything(len(published)))["survivor"]
    assert set(ids(got)) == {m.message_id for m in published}
    assert set(taken) <= set(ids(got))
    wait_backlog_empty(bus, "g")


def test_members_converge_to_disjoint_fair_shares() -> None:
    state: dict[str, Any] = {}
    members = [f"worker-{n}" for n in range(3)]
    held: dict[str, frozenset[int]] = {}
    for round_ in range(6):
        for member in members:
            state, assignment = rebalance(
                state, member, range(16), idle=range(16), now=100.0 + round_, ttl=30
            )
            held[member] = assignment.held
    assert sorted(p for parts in held.values() for p in parts) == list(range(16))
    assert all(len(parts) <= 6 for parts in held.values())  # at most ⌈16 / 3⌉ each
    # One member stops renewing: after the timeout the others take its partitions.
    for member in members[:2]:
        state, assignment = rebalance(state, member, range(16), range(16), now=140.0, ttl=30)
        held[member] = assignment.held
    for member in members[:2]:
        state, assignment = rebalance(state, member, range(16), range(16), now=141.0, ttl=30)
        held[member] = assignment.held
    assert sorted(held["worker-0"] | held["worker-1"]) == list(range(16))
    assert not held["worker-0"] & held["worker-1"]


def test_a_joining_member_knows_partitions_are_coming_and_the_giver_knows_it_gives() -> None:
    """Both run quick rounds while partitions change hands (`handing_over`), and only then."""
    state, first = rebalance({}, "a", range(16), idle=(), now=100.0, ttl=30)
    assert len(first.held) == 16 and not first.handing_over
    state, joining = rebalance(state, "b", range(16), idle=(), now=100.5, ttl=30)
    assert not joining.held and joining.awaiting  # "a" holds 16, more than its share of 8
    busy = range(4)  # "a" has messages of partitions 4..15 in flight
    state, giving = rebalance(state, "a", range(16), idle=busy, now=101.0, ttl=30)
    assert len(giving.held) == 16 - 4 and len(giving.surplus) == 4 and giving.handing_over
    state, joining = rebalance(state, "b", range(16), idle=(), now=101.1, ttl=30)
    assert len(joining.held) == 4 and joining.awaiting
    state, giving = rebalance(state, "a", range(16), idle=range(16), now=101.2, ttl=30)
    state, joining = rebalance(state, "b", range(16), idle=(), now=101.3, ttl=30)
    assert len(giving.held) == len(joining.held) == 8
    assert not giving.handing_over and not joining.handing_over
    # Fair shares that cannot be equal (16 over 3: 6, 6, 4) are not a hand-over forever.
    settled: dict[str, Any] = {}
    for round_ in range(4):
        for member in ("a", "b", "c"):
            state, settled[member] = rebalance(
                state, member, range(16), range(16), 102 + round_, 30
            )
    assert sorted(len(s.held) for s in settled.values()) == [4, 6, 6]
    assert not any(s.handing_over for s in settled.values())


def _seqs_by_key(deliveries: list[BusMessage]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for delivery in deliveries:
        properties = delivery.message.properties or {}
        out.setdefault(partition_key(delivery.message), []).append(properties["seq"])
    return out


@pytest.fixture
def make_nats_bus() -> Iterator[MakeBus]:
    """Like `make_bus`, for NATS only."""
    yield from _bus_factory("nats")


def test_nats_stores_a_republished_batch_once(make_nats_bus: MakeBus) -> None:
    """A publish retried after a lost ack (same message ids) is not delivered twice."""
    bus = make_nats_bus(partitions=2)
    batch = [message(i, user=f"user-{i % 3}") for i in range(30)]
    bus.publish(batch)
    bus.publish(batch)
    assert bus.backlog("g") == len(batch)
    with bus.consumer("g", "solo") as consumer:
        got = collect([consumer], everything(len(batch)))["solo"]
        assert consumer.fetch(timeout=0.5) == []
    assert sorted(ids(got)) == sorted(m.message_id for m in batch)


# -- configuration and errors -----------------------------------------------------------------
def test_reopening_with_another_partition_count_is_refused(make_server_bus: MakeBus) -> None:
    make_server_bus(partitions=4)
    with pytest.raises(BusError, match=r"has 4 partitions, not 8: open it with partitions=4"):
        make_server_bus(partitions=8)


def test_unreachable_servers_give_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(BusError, match=r"unreachable.*start redis-server") as redis_error:
        RedisBus(f"redis://:hunter2@127.0.0.1:{port}/0")
    assert "hunter2" not in str(redis_error.value)
    with pytest.raises(BusError, match=r"unreachable.*start nats-server -js") as nats_error:
        NatsBus(f"nats://user:hunter2@127.0.0.1:{port}")
    assert "hunter2" not in str(nats_error.value)


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: open_bus("kafka://127.0.0.1:9092"), "not supported: use memory://"),
        (lambda: open_bus("memory://", prefix="events.v1"), "prefix 'events.v1' is not valid"),
        (lambda: open_bus("memory://", partitions=0), "partitions must be between 1 and 1024"),
        (lambda: open_bus("memory://").consumer("g g", "c"), "group 'g g' is not valid"),
        (lambda: open_bus("memory://", partitions=4).consumer("g", "c", [4]), "subset of 0..3"),
        (lambda: open_bus("memory://").consumer("g", "c").ack(["nope"]), "not a delivery id"),
    ],
)
def test_bad_settings_say_what_to_fix(call: Callable[[], object], says: str) -> None:
    with pytest.raises(BusError, match=says.replace(".", r"\.")):
        call()
