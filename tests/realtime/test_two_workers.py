"""Two `serve --role worker` processes on one Postgres store, fed by one bus.

Ingest publishes; both workers consume the group's partitions, store, evaluate real-time
audiences and deliver to one webhook receiver. One worker is killed with SIGKILL mid-stream
and restarted, twice. Afterwards every acknowledged event is stored once, real-time membership
equals a batch compute, nothing is left pending, and the receiver holds exactly the members.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cohortsync.engine import Engine
from cohortsync.realtime.bus import open_bus
from cohortsync.realtime.bus_roles import GROUP
from tests.conftest import PROJECT_YAML, free_port
from tests.fakes.webhook import WebhookFake
from tests.postgres import postgres_schema
from tests.realtime.conftest import REALTIME_YAML
from tests.realtime.test_roles import (
    BUSES,
    check_membership,
    reachable,
    send,
    spawn,
    wait_for_health,
)

DELIVERED = ("rt_purchase_suppress", "rt_cart_abandon_6h")


def project_yaml(store: str, receiver: WebhookFake) -> str:
    """Real-time audiences on a Postgres store; two of them delivered to the receiver."""
    text = PROJECT_YAML.replace("store: .cohortsync/store.duckdb", f"store: {store}")
    audiences = REALTIME_YAML.replace("  nightly_vip: {segment: vip, refresh: 1d}\n", "")
    audiences = audiences.replace(
        "rt_purchase_suppress: {segment: bought_1d, refresh: realtime}",
        "rt_purchase_suppress: {segment: bought_1d, refresh: realtime, destinations: [hook]}",
    ).replace(
        "    holdout: {percent: 25}\n", "    holdout: {percent: 25}\n    destinations: [hook]\n"
    )
    hook = f'{{type: webhook, url: "{receiver.url}/webhook", secret: "{receiver.secret}"}}'
    return f"{text}{audiences}destinations:\n  hook: {hook}\n"


@pytest.fixture(params=sorted(BUSES))
def bus_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = BUSES[request.param]
    why = reachable(url)
    if why is not None:
        pytest.skip(f"{request.param} is not running at {url}: {why}")
    yield url


def settled(store: str, bus_url: str, stream: str, seconds: float = 120) -> dict[str, int]:
    """Wait until the bus is drained and nothing waits in the store; what was left, if any."""
    bus = open_bus(bus_url, prefix=stream)
    left: dict[str, int] = {}
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with psycopg.connect(store) as pg:
                row = pg.execute(
                    "SELECT (SELECT count(*) FROM realtime_pending), (SELECT count(*) FROM outbox)"
                ).fetchone()
            left = {"backlog": bus.backlog(GROUP), "pending": row[0], "outbox": row[1]}  # type: ignore[index]
            if not any(left.values()):
                return left
            time.sleep(0.5)
        return left
    finally:
        bus.close()


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals (kill -9)")
def test_two_workers_share_a_postgres_store_and_a_kill_9_loses_nothing(
    tmp_path: Path, bus_url: str, webhook_fake: WebhookFake
) -> None:
    stream = f"cs-two-{uuid.uuid4().hex[:10]}"
    port = free_port()
    with postgres_schema() as store:
        (tmp_path / "cohortsync.yml").write_text(project_yaml(store, webhook_fake), "utf-8")
        roles = ["--bus", bus_url, "--bus-stream", stream, "--role"]
        ingest = spawn(tmp_path, *roles, "ingest", "--port", str(port))
        workers = [spawn(tmp_path, *roles, "worker") for _ in range(2)]
        acknowledged: list[str] = []
        stop = threading.Event()
        sender = threading.Thread(target=send, args=(port, 11, stop, acknowledged), daemon=True)
        try:
            wait_for_health(port)
            sender.start()
            for victim in (0, 1):
                time.sleep(random.uniform(1.5, 3.0))
                workers[victim].send_signal(signal.SIGKILL)  # the other keeps working
                workers[victim].wait()
                time.sleep(0.5)
                workers[victim] = spawn(tmp_path, *roles, "worker")
            time.sleep(2.0)
            stop.set()
            sender.join(timeout=10)
            left = settled(store, bus_url, stream)
        finally:
            stop.set()
            ingest.send_signal(signal.SIGINT)
            ingest.wait(timeout=30)
            for worker in workers:
                worker.send_signal(signal.SIGINT)
            errors = [w.communicate(timeout=60)[1].decode() for w in workers]
        open_bus(bus_url, prefix=stream).drop()
        assert [w.returncode for w in workers] == [0, 0], errors
        assert left == {"backlog": 0, "pending": 0, "outbox": 0}

        with psycopg.connect(store) as pg:
            stored = [r[0] for r in pg.execute("SELECT message_id FROM events").fetchall()]
        assert len(acknowledged) > 50
        assert set(acknowledged) <= set(stored)  # every 200 was stored
        assert len(stored) == len(set(stored))  # once

        with Engine.open(tmp_path) as engine:
            check_membership(engine)  # real-time membership equals a batch compute
            for audience in DELIVERED:
                desired = {m.profile_id for m in engine.members(audience)}
                assert held(webhook_fake, audience) == desired, audience


def held(receiver: WebhookFake, audience: str) -> set[str]:
    """The profiles the receiver holds in `audience` after applying every delivery in order."""
    members: set[str] = set()
    for _, body in receiver.applied:
        if body["data"].get("audience") != audience:
            continue
        for change in body["data"]["changes"]:
            if change["operation"] == "add":
                members.add(change["profile_id"])
            else:
                members.discard(change["profile_id"])
    return members
