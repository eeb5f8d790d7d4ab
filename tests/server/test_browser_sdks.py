"""Real browser SDKs on a real page in headless Chromium send their events to cohortsync.

The page (tests/server/browser/sdks.html) is served from its own local origin, so every request
to the ingest API is cross-origin and the browser enforces CORS exactly as on a shop's site.
It loads the npm builds of @segment/analytics-next and @rudderstack/analytics-js (versions pinned
in tests/server/browser/package.json, installed by .ci/run into the browser cache folder), calls
track (anonymous), identify, track and page, in standard and in batching mode, and every event
must be stored with its type, name, ids and the browser's address in `context.ip`. Requests to
any other host are recorded (and cannot resolve): the SDKs must make none.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cohortsync.engine import Engine
from tests.conftest import WRITE_KEY, LiveServer
from tests.server.chromium import browser_missing, launched_chromium

PAGE_DIR = Path(__file__).with_name("browser")
CACHE = Path(
    os.environ.get("COHORTSYNC_BROWSER_CACHE", Path.home() / ".cache" / "cohortsync-browser")
)
BUNDLES = (
    "@segment/analytics-next/dist/umd/index.js",
    "@rudderstack/analytics-js/dist/npm/modern/bundled/umd/index.js",
)
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# RudderStack's JavaScript SDK reads its source's settings from configUrl/sourceConfig/.
SOURCE_CONFIG = {
    "isHosted": False,
    "source": {
        "id": "cohortsync-web",
        "name": "web",
        "writeKey": WRITE_KEY,
        "workspaceId": "local",
        "enabled": True,
        "config": {},
        "destinations": [],
    },
}
# What each SDK posts to in each mode (Segment: first letter of the type, /b for a batch).
PATHS = {
    ("segment", "standard"): {"/v1/t", "/v1/i", "/v1/p"},
    ("segment", "batching"): {"/v1/b"},
    ("rudderstack", "standard"): {"/v1/track", "/v1/identify", "/v1/page"},
    ("rudderstack", "batching"): {"/v1/batch"},
}


def _missing() -> str | None:
    """Why the browser test cannot run here (None: it can)."""
    missing = browser_missing()
    if missing is not None:
        return missing
    for bundle in BUNDLES:
        if not (CACHE / "node_modules" / bundle).is_file():
            return f"npm packages missing in {CACHE} (npm ci there with {PAGE_DIR}/package.json)"
    return None


class _PageHandler(BaseHTTPRequestHandler):
    """The shop's own server: the page, the SDK bundles, and RudderStack's source config."""

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/sdks.html":
            self._send(200, (PAGE_DIR / "sdks.html").read_bytes(), "text/html")
        elif path.startswith("/npm/"):
            modules = (CACHE / "node_modules").resolve()
            target = (modules / path.removeprefix("/npm/")).resolve()
            if target.is_relative_to(modules) and target.is_file():
                self._send(200, target.read_bytes(), "text/javascript")
            else:
                self._send(404, b"not found", "text/plain")
        elif path.rstrip("/") == "/sourceConfig":
            self._send(200, json.dumps(SOURCE_CONFIG).encode(), "application/json")
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reports what matters."""


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    """The shop's page, served from its own loopback origin."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def ingest(page_origin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """cohortsync on another port, its web source allowing the page's origin only."""
    project = tmp_path_factory.mktemp("browser")
    (project / "cohortsync.yml").write_text(
        f"sources:\n  web:\n    write_key: {WRITE_KEY}\n    allowed_origins: [{page_origin}]\n",
        encoding="utf-8",
    )
    with Engine.open(project) as engine:
        server = LiveServer(engine)
        server.start()
        yield server
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, driven by Playwright (each test opens a fresh context)."""
    yield from launched_chromium(_missing())


def _events(engine: Engine, anonymous_ids: set[str], user: str) -> list[dict[str, Any]]:
    rows = engine.store.query(  # type: ignore[attr-defined]
        "SELECT type, event, name, user_id, anonymous_id, context FROM events "
        "WHERE user_id = ? OR anonymous_id IN (SELECT anonymous_id FROM events WHERE user_id = ?)",
        [user, user],
    )
    keys = ("type", "event", "name", "user_id", "anonymous_id", "context")
    events = [dict(zip(keys, row, strict=True)) for row in rows]
    for event in events:
        event["context"] = json.loads(event["context"]) if event["context"] else {}
        anonymous_ids.add(event["anonymous_id"])
    return events


@pytest.mark.parametrize("mode", ["standard", "batching"])
@pytest.mark.parametrize("sdk", ["segment", "rudderstack"])
def test_browser_sdk_events_are_all_stored(
    browser: Any, page_origin: str, ingest: LiveServer, sdk: str, mode: str
) -> None:
    user = f"u-{sdk}-{mode}"
    outside: list[str] = []
    posted: list[tuple[str, int]] = []
    context = browser.new_context()  # a new visitor: no stored anonymousId
    page = context.new_page()

    page.on(
        "request",
        lambda r: None if urlsplit(r.url).hostname in LOCAL_HOSTS else outside.append(r.url),
    )
    page.on(
        "response",
        lambda r: (
            posted.append((urlsplit(r.url).path, r.status))
            if r.request.method == "POST" and r.url.startswith(ingest.url)
            else None
        ),
    )
    query = f"sdk={sdk}&mode={mode}&api={ingest.url}&key={WRITE_KEY}&user={user}"
    page.goto(f"{page_origin}/sdks.html?{query}")
    page.wait_for_function("window.sdkState !== 'loading'", timeout=30_000)
    state = page.evaluate("window.sdkState")
    assert state == "sent", state

    deadline = time.monotonic() + 30
    anonymous_ids: set[str] = set()
    events = _events(ingest.engine, anonymous_ids, user)  # type: ignore[arg-type]
    # page.wait_for_timeout, not time.sleep: Playwright's sync API delivers the "response"
    # events only while it is called, and a stored event can come before its response.
    while (
        len(events) < 4 or not PATHS[sdk, mode] <= {path for path, _ in posted}
    ) and time.monotonic() < deadline:
        page.wait_for_timeout(200)
        events = _events(ingest.engine, anonymous_ids, user)  # type: ignore[arg-type]
    context.close()

    stored = sorted((e["type"], e["event"] or e["name"] or "", e["user_id"] or "") for e in events)
    assert stored == [
        ("identify", "", user),
        ("page", "Checkout", user),
        ("track", "Order Completed", user),
        ("track", "Product Viewed", ""),  # sent before identify: the anonymous visitor only
    ], f"stored {events}; the page posted {posted}"
    assert len(anonymous_ids) == 1 and None not in anonymous_ids  # one visitor throughout
    assert {e["context"].get("ip") for e in events} == {"127.0.0.1"}
    assert {path for path, _ in posted} == PATHS[sdk, mode]
    assert {status for _, status in posted} == {200}
    assert outside == [], f"the page tried to reach other hosts: {outside}"
