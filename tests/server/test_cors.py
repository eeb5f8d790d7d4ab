"""CORS on the ingest routes: what a browser SDK on a shop's page needs to post and read answers.

A browser refuses to send a preflighted request, and hides every answer from the page, unless
the server's headers allow the page's origin: without them analytics.js and RudderStack's SDK
lose every event and cannot even read a 400 or 401.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cohortsync.config.loader import load_project
from cohortsync.engine import Engine
from cohortsync.errors import ConfigError
from tests.conftest import OTHER_KEY, WRITE_KEY, LiveServer

SHOP = "https://shop.example.com"
ADMIN = "https://admin.example.com"
ELSEWHERE = "https://elsewhere.example.net"
INGEST_PATHS = [
    "/v1/track", "/v1/identify", "/v1/page", "/v1/screen", "/v1/group", "/v1/alias", "/v1/batch",
    "/v1/t", "/v1/i", "/v1/p", "/v1/s", "/v1/g", "/v1/a", "/v1/b",
]  # fmt: skip
# What the SDKs ask for: analytics-next, then RudderStack's JavaScript SDK v3.
SEGMENT_HEADERS = "authorization,content-type,x-retry-count"
RUDDER_HEADERS = "anonymousid,authorization,content-type,rsa-retry-attempt,sentat"

PER_SOURCE_YAML = f"""\
store: .cohortsync/store.duckdb
sources:
  web:
    write_key: {WRITE_KEY}
    allowed_origins: [{SHOP}]
  backend:
    write_key: {OTHER_KEY}
    allowed_origins: [{ADMIN}]
"""


def preflight(url: str, origin: str, headers: str = SEGMENT_HEADERS) -> httpx.Response:
    """What a browser sends before a POST with custom headers."""
    return httpx.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers,
        },
    )


def track(message_id: str) -> dict[str, object]:
    return {"messageId": message_id, "userId": "u1", "event": "Viewed Product"}


def stored_ids(engine: Engine) -> set[str]:
    rows = engine.store.query("SELECT message_id FROM events")  # type: ignore[attr-defined]
    return {row[0] for row in rows}


@pytest.fixture
def per_source(project_dir: Path) -> Iterator[LiveServer]:
    """A server whose sources each allow one origin, none allowing every origin."""
    (project_dir / "cohortsync.yml").write_text(PER_SOURCE_YAML, encoding="utf-8")
    with Engine.open(project_dir) as engine:
        server = LiveServer(engine)
        server.start()
        yield server
        server.stop()


@pytest.mark.parametrize("path", INGEST_PATHS)
def test_every_ingest_route_answers_a_preflight_with_204_and_the_sdks_headers(
    live_server: LiveServer, path: str
) -> None:
    response = preflight(live_server.url + path, SHOP, RUDDER_HEADERS)

    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["access-control-allow-methods"] == "POST, OPTIONS"
    assert response.headers["access-control-allow-headers"] == RUDDER_HEADERS
    assert int(response.headers["access-control-max-age"]) > 0
    assert response.content == b""


def test_preflight_echoes_the_headers_analytics_next_asks_for(live_server: LiveServer) -> None:
    response = preflight(f"{live_server.url}/v1/b", SHOP, SEGMENT_HEADERS)

    assert response.status_code == 204
    assert response.headers["access-control-allow-headers"] == SEGMENT_HEADERS


@pytest.mark.parametrize(
    ("auth", "body", "status", "code"),
    [
        ((WRITE_KEY, ""), track("ok"), 200, None),
        (("wk_wrong_0000000000", ""), track("bad-key"), 401, "invalid_write_key"),
        ((WRITE_KEY, ""), {"userId": "u1"}, 400, "missing_event"),
        ((WRITE_KEY, ""), b"{not json", 400, "invalid_json"),
    ],
)
def test_every_post_answer_lets_the_page_read_it(
    live_server: LiveServer,
    auth: tuple[str, str],
    body: object,
    status: int,
    code: str | None,
) -> None:
    content = body if isinstance(body, bytes) else None
    payload = None if isinstance(body, bytes) else body
    response = httpx.post(
        f"{live_server.url}/v1/track",
        json=payload,
        content=content,
        auth=auth,
        headers={"Origin": SHOP},
    )

    assert response.status_code == status, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    if code is not None:
        assert response.json()["code"] == code


def test_a_store_failure_answer_is_readable_too(live_server: LiveServer) -> None:
    live_server.engine.store.close()  # the commit now fails: 503 store_unavailable

    response = httpx.post(
        f"{live_server.url}/v1/batch",
        json={"batch": [track("lost")]},
        auth=(WRITE_KEY, ""),
        headers={"Origin": SHOP},
    )

    assert response.status_code == 503, response.text
    assert response.headers["access-control-allow-origin"] == "*"


def test_preflight_answers_the_union_of_the_sources_origins(per_source: LiveServer) -> None:
    for origin in (SHOP, ADMIN):
        response = preflight(f"{per_source.url}/v1/t", origin)
        assert response.status_code == 204
        assert response.headers["access-control-allow-origin"] == origin
        assert "Origin" in response.headers["vary"]

    refused = preflight(f"{per_source.url}/v1/t", ELSEWHERE)
    assert "access-control-allow-origin" not in refused.headers


def test_a_post_from_an_origin_its_source_does_not_list_is_refused_and_not_stored(
    per_source: LiveServer,
) -> None:
    url = f"{per_source.url}/v1/track"
    allowed = httpx.post(
        url, json=track("from-shop"), auth=(WRITE_KEY, ""), headers={"Origin": SHOP}
    )
    other = httpx.post(
        url, json=track("from-admin"), auth=(WRITE_KEY, ""), headers={"Origin": ADMIN}
    )
    server_side = httpx.post(url, json=track("no-origin"), auth=(WRITE_KEY, ""))

    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == SHOP
    assert allowed.headers["vary"] == "Origin"
    assert other.status_code == 403
    assert other.json()["code"] == "origin_not_allowed"
    assert "sources.web.allowed_origins" in other.json()["message"]
    assert other.headers["access-control-allow-origin"] == ADMIN  # the SDK reads its 403
    assert server_side.status_code == 200, server_side.text
    assert stored_ids(per_source.engine) == {"from-shop", "no-origin"}  # type: ignore[arg-type]


def test_an_unauthenticated_post_uses_the_union_policy(per_source: LiveServer) -> None:
    url = f"{per_source.url}/v1/b"
    body = {"batch": [track("x")]}
    known = httpx.post(url, json=body, auth=("wk_wrong_0000000000", ""), headers={"Origin": ADMIN})
    unknown = httpx.post(url, json=body, headers={"Origin": ELSEWHERE})

    assert known.status_code == 401
    assert known.headers["access-control-allow-origin"] == ADMIN
    assert unknown.status_code == 401
    assert "access-control-allow-origin" not in unknown.headers


def test_other_routes_get_no_cors_headers(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/health", headers={"Origin": SHOP})

    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    "origin", ["https://shop.example.com/", "shop.example.com", "https://shop.example.com/cart"]
)
def test_an_allowed_origin_with_a_path_or_no_scheme_is_a_config_error_at_its_line(
    tmp_path: Path, origin: str
) -> None:
    text = f"sources:\n  web:\n    write_key: {WRITE_KEY}\n    allowed_origins: ['{origin}']\n"
    (tmp_path / "cohortsync.yml").write_text(text, encoding="utf-8")

    with pytest.raises(ConfigError) as raised:
        load_project(tmp_path)

    assert str(raised.value).split(" ", 1)[0].endswith("cohortsync.yml:4:")
    assert f"allowed_origins entry '{origin}'" in str(raised.value)
    assert "scheme, host and port only" in str(raised.value)
