"""The admin API answers what the engine answers, and bad input with a 4xx saying how to fix it.

The real app under uvicorn, over the demo shop computed at a fixed instant, with its
background workers running.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from cohortsync.config.scaffold import scaffold_project
from cohortsync.engine import Engine
from cohortsync.server.admin_api import PREFIX
from cohortsync.server.admin_auth import TOKEN_ENV
from tests.conftest import LiveServer

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
ADMIN = "adm_0123456789abcdefghij"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, LiveServer]]:
    """The demo shop (120 shoppers) computed at NOW, served with its admin token."""
    folder: Path = tmp_path_factory.mktemp("shop")
    scaffold_project(folder)
    path = folder / "cohortsync.yml"
    path.write_text(path.read_text() + f"\nadmin:\n  tokens: [{ADMIN}]\n", encoding="utf-8")
    with Engine.open(folder) as engine:
        engine.load_demo(120, seed=7, now=NOW)
        engine.compute(NOW)
        server = LiveServer(engine, background=True)
        server.start()
        try:
            yield engine, server
        finally:
            server.stop()


@pytest.fixture
def api(shop: tuple[Engine, LiveServer], monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=shop[1].url + PREFIX, headers=headers, timeout=120) as client:
        yield client


def problem(response: httpx.Response, status: int, code: str) -> str:
    """The message of a refusal, after checking its status and code."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail["code"] == code
    message: str = detail["message"]
    return message


def test_members_are_the_engines_members(
    shop: tuple[Engine, LiveServer], api: httpx.Client
) -> None:
    engine, _ = shop
    found = api.get("/audiences/cio_ltv_low/members").json()
    assert found == [
        {
            "profile_id": m.profile_id,
            "user_id": m.user_id,
            "email": m.email,
            "phone": m.phone,
            "holdout": m.holdout,
        }
        for m in engine.members("cio_ltv_low")
    ]
    assert found


def test_an_unknown_audience_is_a_404_naming_the_known_ones(api: httpx.Client) -> None:
    for path in ("/audiences/cio_nope/members", "/audiences/cio_nope/preview"):
        message = problem(api.get(path), 404, "unknown_name")
        assert "cio_nope" in message and "cio_ltv_low" in message
    message = problem(api.post("/sync", json={"destination": "nowhere"}), 404, "unknown_name")
    assert message.startswith("no destination named 'nowhere': known destinations: ")
    retried = api.post("/dead-letters/retry", json={"audience": "cio_nope"})
    assert problem(retried, 404, "unknown_name").startswith("no audience named 'cio_nope'")


def test_a_bad_instant_is_a_422_saying_how_to_write_one(api: httpx.Client) -> None:
    message = problem(
        api.get("/audiences/cio_ltv_low/members", params={"at": "soon"}), 422, "bad_input"
    )
    assert message.startswith("at 'soon'") and "at=2026-05-01T12:00:00Z" in message
    message = problem(
        api.get("/report", params={"since": "2026-05-01", "until": "2026-04-01"}), 422, "bad_input"
    )
    assert "since is after until" in message


def test_an_unknown_profile_is_a_404_that_never_shows_the_address(api: httpx.Client) -> None:
    found = api.get("/profile", params={"identifier": "email:nobody.here@example.com"})
    message = problem(found, 404, "not_found")
    assert "nobody.here" not in message


def test_a_profile_is_found_by_email_with_its_memberships(
    shop: tuple[Engine, LiveServer], api: httpx.Client
) -> None:
    engine, _ = shop
    member = next(m for m in engine.members("cio_ltv_low") if m.email)
    found = api.get("/profile", params={"identifier": f"email:{member.email}"}).json()
    assert found["profile_id"] == member.profile_id
    assert "cio_ltv_low" in {m["name"] for m in found["memberships"]}


def test_compute_now_records_a_run_beside_the_background_workers(api: httpx.Client) -> None:
    report = api.post("/compute").json()
    assert report["recorded"] is True and report["run_id"] is not None
    assert {row["name"] for row in report["rows"]} >= {"cio_ltv_low"}


def test_every_admin_handler_runs_in_the_thread_pool(shop: tuple[Engine, LiveServer]) -> None:
    """Plain functions: FastAPI runs them off the event loop, so store work never stalls ingest."""
    handlers = [
        route.original_route
        for route in iter_route_contexts(shop[1].app.routes)
        if route.path.startswith(PREFIX)
    ]
    assert handlers
    for route in handlers:
        endpoint = getattr(route, "endpoint", None)
        assert endpoint is not None and not inspect.iscoroutinefunction(endpoint), route
