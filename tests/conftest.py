"""Shared fixtures: a real project on disk, its engine, and a real uvicorn server."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cohortsync.engine import Engine
from cohortsync.server.app import create_app
from tests.postgres import postgres_schema

pytest_plugins = ["tests.fakes.fixtures"]

WRITE_KEY = "wk_test_0123456789"
OTHER_KEY = "wk_other_9876543210"

PROJECT_YAML = f"""\
store: .cohortsync/store.duckdb
identity:
  primary: email
  secondary: [phone]
  default_region: US
sources:
  web:
    write_key: {WRITE_KEY}
  backend:
    write_key: {OTHER_KEY}
"""


def wait_until_healthy(
    url: str, seconds: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Until the server at `url` answers /health; AssertionError when the time is up or when
    `process` (the server) exits first, with what it wrote to stderr."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(f"{url}/health", timeout=0.5)
            return
        except httpx.TransportError:
            if process is not None and process.poll() is not None:
                said = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise AssertionError(f"cohortsync serve exited at start: {said}") from None
            if time.monotonic() >= deadline:
                raise AssertionError(f"no answer from {url}/health in {seconds:g} s") from None
            time.sleep(0.05)


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A folder with a valid cohortsync.yml whose `web` source uses WRITE_KEY."""
    (tmp_path / "cohortsync.yml").write_text(PROJECT_YAML, encoding="utf-8")
    return tmp_path


@pytest.fixture(params=["duckdb", "postgres"])
def store_location(request: pytest.FixtureRequest) -> Iterator[str]:
    """What `store:` says, once per engine: the DuckDB file, then a fresh Postgres schema."""
    if request.param == "duckdb":
        yield ".cohortsync/store.duckdb"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
def project_on_both(tmp_path: Path, store_location: str) -> Path:
    """`project_dir`, run once on DuckDB and once on Postgres (tests that must hold on both)."""
    text = PROJECT_YAML.replace("store: .cohortsync/store.duckdb", f"store: {store_location}")
    (tmp_path / "cohortsync.yml").write_text(text, encoding="utf-8")
    return tmp_path


@pytest.fixture
def engine(project_dir: Path) -> Iterator[Engine]:
    """The project opened on its own DuckDB file."""
    with Engine.open(project_dir) as opened:
        yield opened


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """A uvicorn server on a free loopback port, running the real app in a thread."""

    def __init__(self, engine: Engine, **app_options: Any) -> None:
        self.engine = engine
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(engine, **app_options)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        wait_until_healthy(self.url, 10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server(engine: Engine) -> Iterator[LiveServer]:
    """A running ingest server over `engine`."""
    server = LiveServer(engine)
    server.start()
    yield server
    server.stop()
