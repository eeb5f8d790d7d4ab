"""`context.ip` of browser events: the shopper's address, as Meta's Conversions API needs it.

It comes from the TCP peer, and from X-Forwarded-For only when `serve --trusted-proxies` names
the hop that wrote it: anyone can send that header, so believing it by default would let any
page put any address on its events.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cohortsync.engine import Engine
from cohortsync.events.timestamps import now_micros
from cohortsync.realtime.bus import decode, encode, open_bus
from cohortsync.realtime.bus_roles import BusGateway
from cohortsync.server.client_ip import (
    TrustedProxies,
    client_address,
    parse_trusted_proxies,
)
from tests.conftest import WRITE_KEY, LiveServer, free_port, wait_until_healthy

COHORTSYNC = Path(sys.executable).with_name("cohortsync")
SHOP = "https://shop.example.com"
SHOPPER = "203.0.113.9"


class DirectServer(LiveServer):
    """A live server that leaves X-Forwarded-For to the app, as `serve` runs it."""

    def __init__(self, engine: Any, **app_options: Any) -> None:
        super().__init__(engine, **app_options)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", proxy_headers=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)


def serving(engine: Any, trusted: str = "") -> Iterator[DirectServer]:
    server = DirectServer(engine, trusted_proxies=parse_trusted_proxies(trusted))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def direct(engine: Engine) -> Iterator[DirectServer]:
    """The app trusting no proxy."""
    yield from serving(engine)


@pytest.fixture
def behind_proxy(engine: Engine) -> Iterator[DirectServer]:
    """The app trusting the loopback proxy and a private hop in front of it."""
    yield from serving(engine, "127.0.0.1/32, 10.0.0.0/8")


def context_of(engine: Engine, message_id: str) -> dict[str, Any]:
    rows = engine.store.query(  # type: ignore[attr-defined]
        "SELECT context FROM events WHERE message_id = ?", [message_id]
    )
    assert len(rows) == 1, f"{message_id} stored {len(rows)} times"
    return json.loads(rows[0][0]) if rows[0][0] else {}


def send(url: str, path: str, body: dict[str, Any], **headers: str) -> None:
    response = httpx.post(url + path, json=body, auth=(WRITE_KEY, ""), headers=headers)
    assert response.status_code == 200, response.text


def track(message_id: str, **extra: Any) -> dict[str, Any]:
    return {"messageId": message_id, "userId": "u1", "event": "Order Completed", **extra}


def test_a_browser_event_gets_the_peer_address_and_keeps_its_other_context(
    direct: DirectServer, engine: Engine
) -> None:
    send(direct.url, "/v1/t", track("t", context={"userAgent": "UA"}), Origin=SHOP)

    assert context_of(engine, "t") == {"userAgent": "UA", "ip": "127.0.0.1"}


def test_every_event_of_a_browser_batch_gets_the_address(
    direct: DirectServer, engine: Engine
) -> None:
    batch = [{"type": "track", **track("b1")}, {"type": "page", "messageId": "b2", "userId": "u"}]
    send(direct.url, "/v1/b", {"batch": batch, "context": {"library": {"name": "x"}}}, Origin=SHOP)

    assert context_of(engine, "b1") == {"library": {"name": "x"}, "ip": "127.0.0.1"}
    assert context_of(engine, "b2")["ip"] == "127.0.0.1"


def test_an_ip_the_event_carries_is_kept(direct: DirectServer, engine: Engine) -> None:
    send(direct.url, "/v1/track", track("own", context={"ip": "198.51.100.1"}), Origin=SHOP)

    assert context_of(engine, "own") == {"ip": "198.51.100.1"}


def test_a_server_side_event_gets_no_address_of_the_server(
    direct: DirectServer, engine: Engine
) -> None:
    send(direct.url, "/v1/track", track("backend"))  # no Origin: not a browser

    assert "ip" not in context_of(engine, "backend")


def test_x_forwarded_for_is_ignored_from_a_peer_not_trusted(
    direct: DirectServer, engine: Engine
) -> None:
    send(direct.url, "/v1/track", track("spoofed"), Origin=SHOP, **{"X-Forwarded-For": SHOPPER})

    assert context_of(engine, "spoofed")["ip"] == "127.0.0.1"


def test_x_forwarded_for_names_the_client_behind_trusted_proxies(
    behind_proxy: DirectServer, engine: Engine
) -> None:
    # The shopper claims 192.0.2.1; the first trusted hop (10.1.2.3) saw 203.0.113.9 connect.
    chain = f"192.0.2.1, {SHOPPER}, 10.1.2.3"
    send(behind_proxy.url, "/v1/track", track("x"), Origin=SHOP, **{"X-Forwarded-For": chain})

    assert context_of(engine, "x")["ip"] == SHOPPER


def test_the_ingest_role_publishes_the_address_to_the_bus(project_dir: Path) -> None:
    bus = open_bus("memory://", prefix="client-ip")
    with Engine.open(project_dir) as engine:
        project = engine.project
    for server in serving(BusGateway(project, bus, now_micros)):
        send(server.url, "/v1/t", track("via-bus"), Origin=SHOP)
    with bus.consumer("test", "reader") as consumer:
        published = [d.message for d in consumer.fetch(10, 5.0)]

    assert [m.message_id for m in published] == ["via-bus"]
    # What a worker on Redis or NATS stores is the message as the bus encodes it.
    assert decode(encode(published[0])).context == {"ip": "127.0.0.1"}


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("198.51.100.7", [], "", "198.51.100.7"),
        ("198.51.100.7", [SHOPPER], "", "198.51.100.7"),
        ("198.51.100.7", [SHOPPER], "10.0.0.0/8", "198.51.100.7"),
        ("10.0.0.2", [SHOPPER], "10.0.0.0/8", SHOPPER),
        ("10.0.0.2", [f"{SHOPPER}, 10.0.0.9"], "10.0.0.0/8", SHOPPER),
        ("10.0.0.2", ["192.0.2.1", f"{SHOPPER}, 10.0.0.9"], "10.0.0.0/8", SHOPPER),
        ("10.0.0.2", ["10.0.0.8, 10.0.0.9"], "10.0.0.0/8", "10.0.0.8"),
        ("10.0.0.2", [], "10.0.0.0/8", "10.0.0.2"),
        ("10.0.0.2", [f"{SHOPPER}, garbage, 10.0.0.9"], "10.0.0.0/8", "10.0.0.9"),
        ("10.0.0.2", [f"{SHOPPER}:4711"], "10.0.0.0/8", SHOPPER),
        ("10.0.0.2", ["[2001:db8::1]:443"], "10.0.0.0/8", "2001:db8::1"),
        ("::1", ["2001:db8::1"], "::1/128", "2001:db8::1"),
        ("::ffff:10.0.0.2", [SHOPPER], "10.0.0.0/8", SHOPPER),
        (None, [SHOPPER], "10.0.0.0/8", None),
    ],
)
def test_client_address_believes_only_trusted_hops(
    peer: str | None, forwarded: list[str], trusted: str, expected: str | None
) -> None:
    networks: TrustedProxies = parse_trusted_proxies(trusted)

    assert client_address(peer, forwarded, networks) == expected


def test_trusted_proxies_read_cidrs_and_single_addresses() -> None:
    assert parse_trusted_proxies(" 10.0.0.0/8,127.0.0.1 ,::1") == (
        ip_network("10.0.0.0/8"),
        ip_network("127.0.0.1/32"),
        ip_network("::1/128"),
    )


def test_serve_refuses_a_bad_trusted_proxy_with_a_clear_message(project_dir: Path) -> None:
    done = subprocess.run(
        [str(COHORTSYNC), "serve", "--project", str(project_dir), "--trusted-proxies",
         "10.0.0.0/8,proxy.internal"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip

    assert done.returncode == 1
    assert "proxy.internal" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("trusted", "expected"), [(None, "127.0.0.1"), ("127.0.0.1", SHOPPER)])
def test_serve_believes_x_forwarded_for_only_with_trusted_proxies(
    project_dir: Path, trusted: str | None, expected: str
) -> None:
    port = free_port()
    extra = ["--trusted-proxies", trusted] if trusted else []
    server = subprocess.Popen(
        [str(COHORTSYNC), "serve", "--project", str(project_dir), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, 60, server)
        send(url, "/v1/t", track("served"), Origin=SHOP, **{"X-Forwarded-For": SHOPPER})
    finally:
        server.terminate()
        server.wait(timeout=30)
    with Engine.open(project_dir) as engine:
        assert context_of(engine, "served")["ip"] == expected
