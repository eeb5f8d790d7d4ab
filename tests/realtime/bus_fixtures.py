"""Helpers for the bus tests: where the servers are, sample messages, draining consumers.

Run as a program, it is a consumer that fetches without acking until killed (the kill test):
`python -m tests.realtime.bus_fixtures URL PREFIX PARTITIONS VISIBILITY GROUP NAME WANT`.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterable
from typing import Any

from cohortsync.realtime.bus import BusMessage, Consumer, open_bus
from cohortsync.store.records import Message

URLS = {
    "memory": "memory://",
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
}
SERVERS = {
    "redis": ("127.0.0.1", 6379, "redis-server"),
    "nats": ("127.0.0.1", 4222, "nats-server -js"),
}
T0_US = 1_775_034_000_000_000


def unreachable(kind: str) -> str | None:
    """Why the bus `kind` cannot be tested here (its server does not answer), or None."""
    if kind not in SERVERS:
        return None
    host, port, command = SERVERS[kind]
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return f"{kind} is not reachable on {host}:{port} (start `{command}`)"
    return None


def message(
    seq: int,
    user: str | None = None,
    anonymous: str | None = None,
    **fields: Any,
) -> Message:
    """A small track message; `properties.seq` orders a key's messages."""
    return Message(
        message_id=f"msg-{user or anonymous}-{seq:06d}",
        type="track",
        source="web",
        timestamp_us=T0_US + seq,
        original_timestamp_us=T0_US + seq,
        received_at_us=T0_US + seq,
        event="Product Viewed",
        event_key="product_viewed",
        user_id=user,
        anonymous_id=anonymous,
        properties={"seq": seq},
        **fields,
    )


def collect(
    consumers: Iterable[Consumer],
    until: Any,
    *,
    ack: bool = True,
    limit: float = 30.0,
    batch: int = 200,
) -> dict[str, list[BusMessage]]:
    """Fetch (and ack) from each consumer in turn until `until(received)` holds.

    `received` maps each consumer's name to its deliveries in order; fails after `limit` s.
    """
    members = list(consumers)
    received: dict[str, list[BusMessage]] = {c.name: [] for c in members}
    deadline = time.monotonic() + limit
    while not until(received):
        if time.monotonic() > deadline:
            counts = {name: len(got) for name, got in received.items()}
            raise AssertionError(f"the bus did not deliver in {limit:.0f} s: got {counts}")
        for consumer in members:
            got = consumer.fetch(batch, timeout=0.05)
            received[consumer.name].extend(got)
            if ack and got:
                consumer.ack([d.id for d in got])
    return received


def ids(deliveries: Iterable[BusMessage]) -> list[str]:
    """The message ids of deliveries, in order."""
    return [d.message.message_id for d in deliveries]


def _victim(argv: list[str]) -> None:
    """Fetch at least `want` messages without acking, say which, then wait to be killed."""
    url, prefix, partitions, visibility, group, name, want = argv
    bus = open_bus(url, prefix, int(partitions), float(visibility))
    consumer = bus.consumer(group, name)
    got: list[BusMessage] = []
    while len(got) < int(want):
        got.extend(consumer.fetch(50, timeout=0.2))
    print(" ".join(ids(got)), flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    _victim(sys.argv[1:])
