"""`/metrics` and `/ready` of a real server: what Prometheus scrapes equals what happened.

Events go in over HTTP (some quarantined), real-time evaluation puts three buyers into an
audience, and delivery sends them to three webhook destinations on one fake: one acknowledges,
one refuses for good (dead letters), one answers 401 (paused: the records stay in the outbox).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from cohortsync.engine import Engine, bus_gateway
from cohortsync.server.app import create_app
from tests.conftest import (
    OTHER_KEY,
    PROJECT_YAML,
    WRITE_KEY,
    LiveServer,
    free_port,
    wait_until_healthy,
)
from tests.fakes.webhook import WebhookFake
from tests.realtime.conftest import Clock, message

ADMIN_TOKEN = "admin-token-0123456789abcdef"
AUDIENCE = "cio_recent_purch_7d_suppress"
BUYERS = ("ann", "bob", "cyd")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def project(fake: WebhookFake, store: str) -> str:
    def hook(path: str) -> str:
        return f'{{type: webhook, url: "{fake.base_url}{path}", secret: "{fake.secret}"}}'

    return (
        PROJECT_YAML.replace("store: .cohortsync/store.duckdb", f"store: {store}")
        + f"""\
admin: {{tokens: [{ADMIN_TOKEN}]}}
segments:
  bought_7d: {{event: order_completed, within: 7d}}
audiences:
  {AUDIENCE}:
    segment: bought_7d
    refresh: realtime
    destinations: [hook, refusing, locked]
destinations:
  hook: {hook("/webhook")}
  refusing: {hook("/refusing")}
  locked: {hook("/locked")}
"""
    )


@pytest.fixture
def engine_with_hooks(
    project_dir: Path, webhook_fake: WebhookFake, store_location: str
) -> Iterator[Engine]:
    """The project on DuckDB, then on Postgres."""
    webhook_fake.fail(400, seconds=600, path="/refusing")  # refused for good: dead letters
    webhook_fake.fail(401, seconds=600, path="/locked")  # paused: its records stay queued
    yaml = project(webhook_fake, store_location)
    (project_dir / "cohortsync.yml").write_text(yaml, encoding="utf-8")
    with Engine.open(project_dir) as opened:
        yield opened


@pytest.fixture
def server(engine_with_hooks: Engine) -> Iterator[LiveServer]:
    live = LiveServer(engine_with_hooks)
    live.start()
    yield live
    live.stop()


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` on real uvicorn, its startup run, until the block ends; yields its URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, 10)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def event(kind: str, user: str | None, **fields: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"type": kind, "timestamp": datetime.now(UTC).isoformat(), **fields}
    if user is not None:
        found["userId"] = user
    return found


def scrape(url: str, token: str = ADMIN_TOKEN) -> Samples:
    response = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def eventually(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not within the deadline")
        time.sleep(0.05)


def changes_applied(fake: WebhookFake) -> int:
    return sum(len(body["data"]["changes"]) for _, body in fake.applied)


def route(engine: Engine, destination: str) -> Any:
    return next(s for s in engine.sync_status() if s.destination == destination)


def test_metrics_count_what_was_stored_quarantined_and_delivered(
    server: LiveServer, engine_with_hooks: Engine, webhook_fake: WebhookFake
) -> None:
    batch = [
        *(event("identify", user, traits={"plan": "pro"}) for user in BUYERS),
        *(
            event("track", user, event="Order Completed", properties={"revenue": 20})
            for user in BUYERS
        ),
        event("track", "dan"),  # no event name: quarantined
        event("track", None, event="Order Completed"),  # nobody: quarantined
    ]
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, "")) as web:
        answer = web.post("/v1/batch", json={"batch": batch})
        assert answer.status_code == 200 and len(answer.json()["quarantined"]) == 2
        assert web.post("/v1/track", json=event("track", "eve")).status_code == 400
        assert web.post("/v1/page", json=event("page", "eve", name="Home")).status_code == 200
    backend = httpx.post(
        f"{server.url}/v1/track",
        json=event("track", "fay", event="Signed Up"),
        auth=(OTHER_KEY, ""),
    )
    assert backend.status_code == 200

    eventually(lambda: changes_applied(webhook_fake) == len(BUYERS))
    eventually(lambda: route(engine_with_hooks, "refusing").dead_lettered == len(BUYERS))
    eventually(lambda: (route(engine_with_hooks, "locked").last_error or "").startswith("paused"))
    samples = scrape(server.url)

    stats = engine_with_hooks.stats()
    assert stats["events"]["total"] == 8 and stats["quarantined"]["total"] == 3
    assert value(samples, "cohortsync_events_received_total", source="web") == 10
    assert value(samples, "cohortsync_events_stored_total", source="web") == 7
    assert value(samples, "cohortsync_events_quarantined_total", source="web") == 3
    assert value(samples, "cohortsync_events_received_total", source="backend") == 1
    assert value(samples, "cohortsync_events_stored_total", source="backend") == 1
    assert value(samples, "cohortsync_events_quarantined_total", source="backend") == 0
    assert value(samples, "cohortsync_ingest_latency_seconds_count") == 4  # one per request

    delivered = "cohortsync_delivery_records_total"
    assert value(samples, delivered, destination="hook", outcome="acknowledged") == 3
    assert value(samples, delivered, destination="hook", outcome="dead") == 0
    assert value(samples, delivered, destination="refusing", outcome="dead") == 3
    assert value(samples, delivered, destination="refusing", outcome="acknowledged") == 0
    assert value(samples, delivered, destination="locked", outcome="retried") >= 1
    assert value(samples, delivered, destination="locked", outcome="acknowledged") == 0

    for name in ("hook", "refusing", "locked"):  # the gauges are the store's own counts
        status = route(engine_with_hooks, name)
        pending = value(samples, "cohortsync_outbox_pending_records", destination=name)
        dead = value(samples, "cohortsync_dead_letter_records", destination=name)
        assert (pending, dead) == (status.pending, status.dead_lettered)
    assert value(samples, "cohortsync_outbox_pending_records", destination="locked") == 3
    assert value(samples, "cohortsync_dead_letter_records", destination="refusing") == 3

    assert value(samples, "cohortsync_realtime_lag_seconds_count") >= 1
    assert ("cohortsync_realtime_backlog_age_seconds", frozenset()) in samples


def test_a_resent_message_is_counted_as_a_duplicate(
    server: LiveServer, engine_with_hooks: Engine
) -> None:
    sent = event("track", "ann", event="Signed Up", messageId="resent-1")
    for _ in range(2):
        assert httpx.post(f"{server.url}/v1/track", json=sent, auth=(WRITE_KEY, "")).is_success
    samples = scrape(server.url)
    assert engine_with_hooks.stats()["events"]["total"] == 1
    assert value(samples, "cohortsync_events_stored_total", source="web") == 2  # acknowledged
    assert value(samples, "cohortsync_events_duplicate_total") == 1  # not written twice


def test_metrics_need_the_admin_token(server: LiveServer) -> None:
    anonymous = httpx.get(f"{server.url}/metrics")
    assert anonymous.status_code == 401
    assert "Authorization: Bearer" in anonymous.json()["detail"]["message"]
    write_key = httpx.get(f"{server.url}/metrics", headers={"authorization": f"Bearer {WRITE_KEY}"})
    assert write_key.status_code == 401
    assert httpx.get(f"{server.url}/metrics", auth=(WRITE_KEY, "")).status_code == 401
    assert scrape(server.url)  # the admin token opens it
    assert httpx.get(f"{server.url}/health").status_code == 200  # liveness stays open


def test_ready_once_started_with_its_workers(engine_with_hooks: Engine) -> None:
    unstarted = create_app(engine_with_hooks)  # startup (the lifespan) never ran

    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=unstarted)
        async with httpx.AsyncClient(transport=transport, base_url="http://cohortsync") as client:
            return await client.get("/ready")

    answer = asyncio.run(ask())
    assert answer.status_code == 503
    assert answer.json()["problems"][0].startswith("starting")
    with serving(create_app(engine_with_hooks)) as url:
        ready = httpx.get(f"{url}/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_not_ready_when_the_store_cannot_be_read(engine_with_hooks: Engine) -> None:
    with serving(create_app(engine_with_hooks, background=False)) as url:
        assert httpx.get(f"{url}/ready").status_code == 200
        engine_with_hooks.store.close()
        closed = httpx.get(f"{url}/ready")
        assert closed.status_code == 503
        assert closed.json()["status"] == "not_ready"
        assert closed.json()["problems"][0].startswith("store: cannot be read")
        assert httpx.get(f"{url}/health").status_code == 200  # alive, only not ready


def test_the_ingest_role_is_ready_with_its_bus_and_counts_what_it_published(
    project_dir: Path,
) -> None:
    (project_dir / "cohortsync.yml").write_text(
        PROJECT_YAML + f"admin: {{tokens: [{ADMIN_TOKEN}]}}\n", encoding="utf-8"
    )
    gateway = bus_gateway(project_dir, "memory://", "metrics-test")
    bus = gateway.bus
    with serving(create_app(gateway)) as url:
        assert httpx.get(f"{url}/ready").json() == {"status": "ready"}
        batch = {"batch": [event("track", "ann", event="Order Completed"), event("track", "bob")]}
        assert httpx.post(f"{url}/v1/batch", json=batch, auth=(WRITE_KEY, "")).is_success
        samples = scrape(url)
    assert value(samples, "cohortsync_events_stored_total", source="web") == 1
    assert value(samples, "cohortsync_events_quarantined_total", source="web") == 1
    assert bus.backlog("cohortsync-workers") == 2  # the message and the rejection, published
    assert not [name for name, _ in samples if name.startswith("cohortsync_outbox")]


def test_timer_lag_is_how_late_a_window_closed_by_the_serve_clock(project_dir: Path) -> None:
    cart = "cio_cart_abandon_6h"
    (project_dir / "cohortsync.yml").write_text(
        PROJECT_YAML
        + f"""\
admin: {{tokens: [{ADMIN_TOKEN}]}}
segments:
  cart_6h: {{event: added_to_cart, within: 6h}}
audiences:
  {cart}: {{segment: cart_6h, refresh: realtime}}
""",
        encoding="utf-8",
    )
    clock = Clock()
    with Engine.open(project_dir) as engine, serving(create_app(engine, clock=clock)) as url:
        added = message("track", "ann", clock.now, event="Added To Cart")
        assert httpx.post(f"{url}/v1/track", json=added, auth=(WRITE_KEY, "")).is_success
        eventually(lambda: len(engine.members(cart)) == 1)
        clock.now += timedelta(hours=7)  # the 6 h window closed an hour ago
        eventually(lambda: engine.members(cart) == [])
        samples = scrape(url)
    assert value(samples, "cohortsync_timer_lag_seconds_count") == 1
    assert value(samples, "cohortsync_timer_lag_seconds_sum") == 3600


@contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own on a free port, in memory only: its URL and process."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_ingest_role_is_not_ready_once_its_bus_is_gone(project_dir: Path) -> None:
    (project_dir / "cohortsync.yml").write_text(PROJECT_YAML, encoding="utf-8")
    with redis_server() as (bus_url, redis_process):
        gateway = bus_gateway(project_dir, bus_url, "ready-test")
        with serving(create_app(gateway)) as url:
            assert httpx.get(f"{url}/ready").json() == {"status": "ready"}
            redis_process.terminate()
            redis_process.wait(timeout=10)
            gone = httpx.get(f"{url}/ready", timeout=10)
            assert gone.status_code == 503
            assert gone.json()["problems"][0].startswith("bus:")
            assert httpx.get(f"{url}/health").status_code == 200
        gateway.bus.close()
