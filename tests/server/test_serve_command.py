"""`cohortsync serve --host --port` starts the ingest API that the README documents."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from cohortsync.engine import Engine
from tests.conftest import WRITE_KEY, free_port, wait_until_healthy

COHORTSYNC = Path(sys.executable).with_name("cohortsync")


def test_serve_command_accepts_events_and_stores_them_durably(project_dir: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [str(COHORTSYNC), "serve", "--project", str(project_dir), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, 20, server)
        response = httpx.post(
            f"{url}/v1/identify",
            json={"userId": "u-serve", "traits": {"email": "Serve@Example.com"}},
            auth=(WRITE_KEY, ""),
        )
        assert response.status_code == 200, response.text
    finally:
        server.terminate()
        server.wait(timeout=20)
    with Engine.open(project_dir) as engine:
        view = engine.find_profile("email:serve@example.com")
    assert {(i["kind"], i["value"]) for i in view.identifiers} == {
        ("user_id", "u-serve"),
        ("email", "serve@example.com"),
    }
