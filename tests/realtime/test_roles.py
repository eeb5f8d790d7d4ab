"""`serve --role ingest|worker` over a real bus: ingest answers once the bus has the events,
the worker stores and evaluates them, and a kill -9 of the worker loses nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from cohortsync.audiences.compute import compute_members
from cohortsync.engine import Engine
from cohortsync.events.timestamps import now_micros, to_micros
from cohortsync.realtime.bus import BusError, open_bus
from cohortsync.realtime.bus_roles import GROUP, BusGateway, BusWorker
from cohortsync.realtime.index import build_index
from tests.conftest import PROJECT_YAML, WRITE_KEY, LiveServer, free_port, wait_until_healthy
from tests.realtime.conftest import REALTIME_YAML, message
from tests.realtime.test_crash_realtime import random_event

BUSES = {"redis": "redis://127.0.0.1:6379/0", "nats": "nats://127.0.0.1:4222"}
YAML = PROJECT_YAML + REALTIME_YAML.replace("nightly_vip: {segment: vip, refresh: 1d}", "")


def reachable(url: str) -> str | None:
    """None when the bus answers, else why not (the skip reason)."""
    try:
        bus = open_bus(url, prefix=f"probe-{uuid.uuid4().hex[:8]}")
    except BusError as exc:
        return str(exc)
    bus.close()
    return None


def check_membership(engine: Engine) -> None:
    index = build_index(engine.segments)
    batch = compute_members(engine.store, engine.segments, to_micros(datetime.now(UTC)))
    for kind, name in index.scope:
        assert {p for p, _ in engine.store.membership(kind, name)} == batch.ids(kind, name), name


def test_ingest_publishes_and_a_worker_stores_and_evaluates(project_dir: Path) -> None:
    (project_dir / "cohortsync.yml").write_text(YAML, encoding="utf-8")
    bus = open_bus("memory://", prefix="roles")
    with Engine.open(project_dir) as engine:
        workers = engine.serve_workers()
        consumer = BusWorker(engine.commit, bus)
        workers.start()
        consumer.start()
        gateway = BusGateway(engine.project, bus, now_micros)
        server = LiveServer(gateway)  # type: ignore[arg-type]
        server.start()
        try:
            raws = [message("track", f"u{n}", datetime.now(UTC), event="Added To Cart")
                    for n in range(20)]  # fmt: skip
            raws.append({"type": "track", "userId": "u1"})  # no event name: quarantined
            response = httpx.post(
                f"{server.url}/v1/batch", json={"batch": raws}, auth=(WRITE_KEY, "")
            )
            assert response.status_code == 200, response.text
            deadline = time.monotonic() + 10
            while consumer.stored < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            server.stop()
            consumer.stop()
            workers.stop()
        stats = engine.stats()
        assert stats["events"]["total"] == 20
        assert stats["quarantined"]["total"] == 1
        assert len(engine.store.membership("audience", "rt_cart_abandon_6h")) == 20
        check_membership(engine)


def drained(url: str, stream: str, seconds: float = 90) -> None:
    """Wait until the worker group has consumed and acked everything published."""
    bus = open_bus(url, prefix=stream)
    try:
        deadline = time.monotonic() + seconds
        while bus.backlog(GROUP) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert bus.backlog(GROUP) == 0, "the worker did not drain the bus"
    finally:
        bus.close()
    time.sleep(1.0)  # the last round of real-time evaluation


def spawn(project: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cohortsync", "serve", "--project", str(project), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def send(port: int, seed: int, stop: threading.Event, acknowledged: list[str]) -> None:
    """Send random events one by one until `stop`; note the message id of every 200."""
    rng = random.Random(seed)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(WRITE_KEY, "")) as client:
        while not stop.is_set():
            raw = random_event(rng)
            try:
                response = client.post(f"/v1/{raw['type']}", json=raw, timeout=5)
            except httpx.TransportError:  # the ingest process is not up yet
                time.sleep(0.05)
                continue
            if response.status_code == 200:
                acknowledged.append(raw["messageId"])


def wait_for_health(port: int, seconds: float = 30) -> None:
    """Until the server on `port` answers /health."""
    wait_until_healthy(f"http://127.0.0.1:{port}", seconds)


@pytest.fixture(params=sorted(BUSES))
def bus_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = BUSES[request.param]
    why = reachable(url)
    if why is not None:
        pytest.skip(f"{request.param} is not running at {url}: {why}")
    yield url


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals (kill -9)")
def test_kill_9_of_the_worker_loses_no_acknowledged_event(project_dir: Path, bus_url: str) -> None:
    (project_dir / "cohortsync.yml").write_text(YAML, encoding="utf-8")
    stream = f"cs-test-{uuid.uuid4().hex[:10]}"
    port = free_port()
    ingest = spawn(project_dir, "--role", "ingest", "--bus", bus_url, "--bus-stream", stream,
                   "--port", str(port))  # fmt: skip
    worker = spawn(project_dir, "--role", "worker", "--bus", bus_url, "--bus-stream", stream)
    acknowledged: list[str] = []
    stop = threading.Event()
    sender = threading.Thread(target=send, args=(port, 3, stop, acknowledged), daemon=True)
    try:
        wait_for_health(port)
        sender.start()
        for _ in range(2):
            time.sleep(random.uniform(1.0, 2.0))
            worker.send_signal(signal.SIGKILL)  # ingest keeps answering: the bus holds events
            worker.wait()
            time.sleep(0.5)
            worker = spawn(
                project_dir, "--role", "worker", "--bus", bus_url, "--bus-stream", stream
            )
        time.sleep(1.0)
        stop.set()
        sender.join(timeout=10)
        drained(bus_url, stream)
    finally:
        stop.set()
        ingest.send_signal(signal.SIGINT)
        ingest.wait(timeout=30)
        worker.send_signal(signal.SIGINT)
        _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr.decode()
    open_bus(bus_url, prefix=stream).drop()
    with Engine.open(project_dir) as engine:
        stored = {r[0] for r in engine.store.query("SELECT message_id FROM events")}  # type: ignore[attr-defined]
        assert len(acknowledged) > 50
        assert set(acknowledged) <= stored  # every 200 was stored, once (primary key)
        check_membership(engine)
