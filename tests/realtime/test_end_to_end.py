"""Through HTTP to Meta's contract fake: a cart add enters the cart audience, the purchase
suppresses at once (leaves it, joins the suppression list), and a 6 h window closes by timer."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cohortsync.engine import Engine
from tests.conftest import PROJECT_YAML, WRITE_KEY, LiveServer
from tests.fakes.meta import MetaFake
from tests.realtime.conftest import Clock, message

CART = "cio_cart_abandon_6h"
SUPPRESS = "cio_recent_purch_7d_suppress"


def project(fake: MetaFake) -> str:
    return (
        PROJECT_YAML
        + f"""\
segments:
  cart_6h:
    all:
      - {{event: added_to_cart, within: 6h}}
      - not: {{event: order_completed, since: added_to_cart}}
  bought_7d: {{event: order_completed, within: 7d}}
audiences:
  {CART}: {{segment: cart_6h, exclude: [bought_7d], refresh: realtime, destinations: [meta_ads]}}
  {SUPPRESS}: {{segment: bought_7d, refresh: realtime, destinations: [meta_ads]}}
destinations:
  meta_ads:
    type: meta_custom_audience
    ad_account_id: act_{fake.ad_account_id}
    access_token: {fake.token}
    api_url: {fake.base_url}
"""
    )


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError("not within the deadline")


def members(fake: MetaFake, audience: str) -> set[str]:
    return fake.members(audience) if audience in fake.audiences() else set()


@pytest.fixture
def server(project_dir: Path, meta_fake: MetaFake, clock: Clock) -> Iterator[LiveServer]:
    (project_dir / "cohortsync.yml").write_text(project(meta_fake), encoding="utf-8")
    meta_fake.now = clock.now
    with Engine.open(project_dir) as engine:
        live = LiveServer(engine, clock=clock)
        live.start()
        yield live
        live.stop()


def send(server: LiveServer, raw: dict[str, Any]) -> None:
    response = httpx.post(f"{server.url}/v1/{raw['type']}", json=raw, auth=(WRITE_KEY, ""))
    assert response.status_code == 200, response.text


def test_cart_add_then_purchase_then_a_window_closing_on_its_own(
    server: LiveServer, meta_fake: MetaFake, clock: Clock
) -> None:
    ann, bob = sha("ann@example.com"), sha("bob@example.com")
    send(server, message("identify", "ann", clock.now, traits={"email": "ann@example.com"}))
    send(server, message("identify", "bob", clock.now, traits={"email": "Bob@Example.com"}))
    send(server, message("track", "ann", clock.now, event="Added To Cart"))
    send(server, message("track", "bob", clock.now, event="Added To Cart"))
    eventually(lambda: members(meta_fake, CART) == {ann, bob})

    clock.now += timedelta(minutes=30)
    send(server, message("track", "ann", clock.now, event="Order Completed"))
    eventually(lambda: members(meta_fake, SUPPRESS) == {ann} and members(meta_fake, CART) == {bob})

    clock.now += timedelta(hours=6)  # no more events: bob's cart ages out by timer
    eventually(lambda: members(meta_fake, CART) == set())
    assert members(meta_fake, SUPPRESS) == {ann}
    workers = server.app.state.workers
    assert workers.loop.rounds > 0
