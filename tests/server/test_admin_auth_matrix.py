"""Every `/api/v1` route, read from the app itself, opens to an admin token and to nothing else.

Routes are enumerated from `app.routes`, so a route added later is in the matrix at once. The
server is the real app under uvicorn, on a project with an admin token and two write keys.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from cohortsync.config.loader import load_project
from cohortsync.engine import Engine
from cohortsync.errors import ConfigError
from cohortsync.server.admin_api import PREFIX
from cohortsync.server.admin_auth import TOKEN_ENV
from tests.conftest import OTHER_KEY, PROJECT_YAML, WRITE_KEY, LiveServer

ADMIN = "adm_0123456789abcdefghij"
WRONG = "adm_9876543210zyxwvutsrq"


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def _served(project_dir: Path, admin_yaml: str) -> Iterator[LiveServer]:
    (project_dir / "cohortsync.yml").write_text(PROJECT_YAML + admin_yaml, encoding="utf-8")
    with Engine.open(project_dir) as engine:
        server = LiveServer(engine, background=False)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """The app over a project whose admin token is ADMIN."""
    yield from _served(tmp_path, f"admin:\n  tokens: [{ADMIN}]\n")


@pytest.fixture
def closed_server(tmp_path: Path) -> Iterator[LiveServer]:
    """The app over a project with no admin token at all."""
    yield from _served(tmp_path, "")


def admin_routes(server: LiveServer) -> list[tuple[str, str]]:
    """(method, path) of every route under /api/v1 (included routers flattened, as the app
    routes them), placeholders filled with a name."""
    found = []
    for route in iter_route_contexts(server.app.routes):
        if route.path.startswith(PREFIX):
            path = re.sub(r"\{[^}]+\}", "cio_nobody", route.path)
            found += [(method, path) for method in sorted(route.methods or {"GET"})]
    return found


def send(server: LiveServer, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body = {} if method == "POST" else None
    return httpx.request(
        method, server.url + path, json=body, headers=headers, timeout=60, params={}
    )


def basic(key: str) -> str:
    """The Authorization header Segment's SDKs send: the write key as Basic user name."""
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


REFUSED = {
    "no Authorization": {},
    "a write key as Bearer": {"Authorization": f"Bearer {WRITE_KEY}"},
    "another source's write key as Bearer": {"Authorization": f"Bearer {OTHER_KEY}"},
    "the write key as Basic": {"Authorization": basic(WRITE_KEY)},
    "a wrong token": {"Authorization": f"Bearer {WRONG}"},
    "the admin token as Basic": {"Authorization": basic(ADMIN)},
}


def test_the_matrix_covers_every_admin_route(server: LiveServer) -> None:
    routes = admin_routes(server)
    paths = {p for _, p in routes}
    assert {f"{PREFIX}/stats", f"{PREFIX}/sync", f"{PREFIX}/dead-letters/retry"} <= paths
    assert len(routes) >= 13


@pytest.mark.parametrize("who", sorted(REFUSED))
def test_every_admin_route_refuses_all_but_an_admin_token(server: LiveServer, who: str) -> None:
    for method, path in admin_routes(server):
        response = send(server, method, path, REFUSED[who])
        assert response.status_code == 401, (who, method, path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["detail"]["code"] == "unauthorized"


def test_every_admin_route_opens_to_the_admin_token(server: LiveServer) -> None:
    for method, path in admin_routes(server):
        response = send(server, method, path, {"Authorization": f"Bearer {ADMIN}"})
        assert response.status_code != 401, (method, path, response.text)
        assert response.status_code < 500, (method, path, response.text)


def test_the_environment_token_opens_the_api_too(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "env_0123456789abcdefghij"
    monkeypatch.setenv(TOKEN_ENV, token)
    response = httpx.get(
        f"{server.url}{PREFIX}/stats", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200


def test_with_no_admin_token_the_api_is_closed_and_says_how_to_open_it(
    closed_server: LiveServer,
) -> None:
    for method, path in admin_routes(closed_server):
        response = send(closed_server, method, path, {"Authorization": f"Bearer {WRONG}"})
        assert response.status_code == 401
        message = response.json()["detail"]["message"]
        assert "admin.tokens" in message and TOKEN_ENV in message


def test_every_admin_route_documents_the_bearer_scheme_a_summary_and_a_tag(
    server: LiveServer,
) -> None:
    schema = httpx.get(f"{server.url}/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["admin token"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    operations = [
        (path, method, operation)
        for path, methods in schema["paths"].items()
        if path.startswith(PREFIX)
        for method, operation in methods.items()
    ]
    assert len(operations) == len(admin_routes(server))
    for path, method, operation in operations:
        assert operation["security"] == [{"admin token": []}], (method, path)
        assert operation["summary"] and operation["tags"], (method, path)
        assert "401" in operation["responses"], (method, path)
        assert "application/json" in operation["responses"]["200"]["content"], (method, path)


def _project(tmp_path: Path, tokens: str) -> Path:
    yaml = PROJECT_YAML + f"admin:\n  tokens:\n    - {ADMIN}\n    - {tokens}\n"
    (tmp_path / "cohortsync.yml").write_text(yaml, encoding="utf-8")
    return tmp_path


def test_a_short_admin_token_is_a_config_error_at_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_project(_project(tmp_path, "short"))
    assert str(caught.value).startswith(f"{tmp_path / 'cohortsync.yml'}:")
    assert "at least 16 characters" in str(caught.value)


def test_an_admin_token_equal_to_a_write_key_is_a_config_error_at_its_line(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_project(_project(tmp_path, WRITE_KEY))
    lines = PROJECT_YAML.count("\n") + 4  # admin:, tokens:, the admin token, this one
    assert str(caught.value).startswith(f"{tmp_path / 'cohortsync.yml'}:{lines}: ")
    assert "write_key" in str(caught.value) and WRITE_KEY not in str(caught.value)


def test_serves_own_token_opens_the_api_and_the_dashboard_with_no_admin_token_set(
    tmp_path: Path,
) -> None:
    """The token `serve` writes to serve.json (readable by its user only) is what the demo
    tells its user to log in with: it opens the API and the dashboard, a write key still not."""
    own = "serve_0123456789abcdefghijkl"
    (tmp_path / "cohortsync.yml").write_text(PROJECT_YAML, encoding="utf-8")
    with Engine.open(tmp_path) as engine:
        server = LiveServer(engine, background=False, serve_token=own)
        server.start()
        try:
            for method, path in admin_routes(server)[:3]:
                opened = send(server, method, path, {"Authorization": f"Bearer {own}"})
                assert opened.status_code != 401, path
                refused = send(server, method, path, {"Authorization": f"Bearer {WRITE_KEY}"})
                assert refused.status_code == 401, path
            with httpx.Client(base_url=server.url) as client:
                assert "closed" not in client.get("/ui/login").text
                wrong = client.post("/ui/login", data={"token": WRITE_KEY, "next": "/ui/"})
                assert wrong.status_code == 401
                logged = client.post("/ui/login", data={"token": own, "next": "/ui/"})
                assert logged.status_code == 303 and logged.headers["location"] == "/ui/"
                assert client.get("/ui/").status_code == 200  # the session cookie opens pages
        finally:
            server.stop()
