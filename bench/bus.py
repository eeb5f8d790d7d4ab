"""Bus benchmark: publish and consume N small messages on each bus.

Run:  .venv/bin/python bench/bus.py [--messages N] [--batch B] [--buses memory,redis,nats]

Each bus gets a fresh prefix with 16 partitions (dropped afterwards); Redis and NATS are the
servers on 127.0.0.1 (a bus whose server does not answer is skipped). Timed, in this order:

- publish: N track messages (~500 bytes encoded) in batches of B by one thread; each call
  returns once the bus acknowledged the whole batch (XADD replies, JetStream acks);
- consume: one consumer of a fresh group drains them: fetch(B), then ack that batch;
- together: on a fresh prefix, a publisher in another process (a thread for the in-process
  bus), started and connected beforehand, and the consumer run at once, from the go signal to
  the last ack;
- baseline: encoding and decoding the N messages with the bus codec alone.

Every message must be delivered exactly once (checked).
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import socket
import sys
import threading
import time
import uuid
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cohortsync.realtime.bus import Bus, BusError, decode, encode, open_bus
from cohortsync.store.records import Message

URLS = {
    "memory": "memory://",
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
}
PORTS = {"redis": 6379, "nats": 4222}
console = Console(width=120)


def messages(count: int, offset: int = 0) -> list[Message]:
    """Small track messages from 5,000 people, like a shop's page traffic."""
    t0 = 1_775_034_000_000_000
    return [
        Message(
            message_id=f"bench-{offset + i:09d}",
            type="track",
            source="web",
            timestamp_us=t0 + i,
            original_timestamp_us=t0 + i,
            received_at_us=t0 + i,
            event="Product Viewed",
            event_key="product_viewed",
            user_id=f"user-{i % 5000}",
            anonymous_id=f"anon-{i % 5000}",
            properties={"product_id": f"sku-{i % 300}", "price": 19.99, "currency": "USD"},
            context={"library": {"name": "analytics-python", "version": "2.3.3"}},
        )
        for i in range(count)
    ]


def publish(bus: Bus, batch: list[Message], size: int) -> None:
    for start in range(0, len(batch), size):
        bus.publish(batch[start : start + size])


def drain(bus: Bus, group: str, expected: int, size: int, patience: float = 5.0) -> float:
    """Fetch and ack until `expected` distinct messages arrived; the time it took."""
    seen: set[str] = set()
    started = time.perf_counter()
    with bus.consumer(group, "bench") as consumer:
        while len(seen) < expected:
            got = consumer.fetch(size, timeout=patience)
            if not got:
                raise SystemExit(f"{group}: nothing delivered at {len(seen)}/{expected}")
            for delivery in got:
                if delivery.message.message_id in seen:
                    raise SystemExit(f"{group}: {delivery.message.message_id} delivered twice")
                seen.add(delivery.message.message_id)
            consumer.ack([d.id for d in got])
    return time.perf_counter() - started


def reachable(kind: str) -> bool:
    if kind not in PORTS:
        return True
    try:
        socket.create_connection(("127.0.0.1", PORTS[kind]), timeout=1).close()
    except OSError:
        return False
    return True


def publish_elsewhere(kind: str, prefix: str, count: int, size: int, ready: Any, go: Any) -> None:
    """Publish the N messages from another process (as a separate ingest process would)."""
    bus = open_bus(URLS[kind], prefix, 16, 30.0)
    batch = messages(count)
    ready.set()
    go.wait()
    try:
        publish(bus, batch, size)
    finally:
        bus.close()


def run(kind: str, count: int, size: int) -> dict[str, float]:
    times: dict[str, float] = {}
    for step in ("apart", "together"):
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        bus = open_bus(URLS[kind], prefix, 16, 30.0)
        try:
            if step == "apart":
                batch = messages(count)
                started = time.perf_counter()
                publish(bus, batch, size)
                times["publish"] = time.perf_counter() - started
                times["consume"] = drain(bus, "workers", count, size)
                continue
            publisher: threading.Thread | BaseProcess
            spawn = multiprocessing.get_context("spawn")
            ready, go = spawn.Event(), spawn.Event()
            if kind == "memory":
                publisher = threading.Thread(target=publish, args=(bus, messages(count), size))
                ready.set()
            else:
                publisher = spawn.Process(
                    target=publish_elsewhere, args=(kind, prefix, count, size, ready, go)
                )
            publisher.start()
            ready.wait()
            started = time.perf_counter()
            go.set()
            drain(bus, "workers", count, size, patience=30.0)
            publisher.join()
            times["together"] = time.perf_counter() - started
        finally:
            try:
                bus.drop()
            finally:
                bus.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--buses", default="memory,redis,nats")
    args = parser.parse_args()
    count, size = args.messages, args.batch

    sample = messages(count)
    started = time.perf_counter()
    encoded = [encode(m) for m in sample]
    encoding = time.perf_counter() - started
    started = time.perf_counter()
    for data in encoded:
        decode(data)
    decoding = time.perf_counter() - started
    average = sum(map(len, encoded)) / len(encoded)

    table = Table(title=f"{count:,} messages (~{average:.0f} bytes), batches of {size:,}")
    for column in ("bus", "publish", "consume", "publish + consume at once"):
        table.add_column(column, justify="right" if column != "bus" else "left")
    table.add_row(
        "codec only", f"encode {count / encoding:,.0f}/s", f"decode {count / decoding:,.0f}/s", ""
    )
    for kind in args.buses.split(","):
        if not reachable(kind):
            table.add_row(kind, "skipped: server not reachable", "", "")
            continue
        try:
            times = run(kind, count, size)
        except BusError as exc:
            table.add_row(kind, f"failed: {exc}", "", "")
            continue
        table.add_row(
            kind,
            f"{count / times['publish']:,.0f}/s ({times['publish']:.2f} s)",
            f"{count / times['consume']:,.0f}/s ({times['consume']:.2f} s)",
            f"{count / times['together']:,.0f}/s ({times['together']:.2f} s)",
        )
    console.print(table)
    console.print(f"Python {platform.python_version()}, {platform.machine()}")


if __name__ == "__main__":
    main()
