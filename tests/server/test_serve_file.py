"""`.cohortsync/serve.json`: where a client on this machine reaches `serve`, readable by its
owner only, and trusted only while its process lives and holds the same store."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cohortsync.server.serve_file import (
    SERVE_FILE,
    ServeInfo,
    client_url,
    live_server,
    read_serve_file,
    remove_serve_file,
    write_serve_file,
)

STORE = "/data/shop/.cohortsync/store.duckdb"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8000"),
        ("::", "http://[::1]:8000"),
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("shop.internal", "http://shop.internal:8000"),
        ("::1", "http://[::1]:8000"),
    ],
)
def test_a_client_reaches_any_address_on_loopback(host: str, url: str) -> None:
    assert client_url(host, 8000) == url


def test_the_file_is_private_and_reads_back(tmp_path: Path) -> None:
    info = ServeInfo("http://127.0.0.1:8000", os.getpid(), STORE, "serve_secret_token")
    before = os.umask(0)  # even a umask that lets everyone read
    try:
        write_serve_file(tmp_path, info)
    finally:
        os.umask(before)
    path = tmp_path / SERVE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_serve_file(tmp_path) == info
    assert live_server(tmp_path, STORE) == info


def test_a_dead_process_or_another_store_is_not_trusted(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_serve_file(tmp_path, ServeInfo("http://127.0.0.1:8000", gone.pid, STORE, "t" * 20))
    assert live_server(tmp_path, STORE) is None
    write_serve_file(tmp_path, ServeInfo("http://127.0.0.1:8000", os.getpid(), STORE, "t" * 20))
    assert live_server(tmp_path, "/elsewhere/store.duckdb") is None


def test_an_unreadable_file_is_no_server(tmp_path: Path) -> None:
    (tmp_path / ".cohortsync").mkdir()
    (tmp_path / SERVE_FILE).write_text("{not json", encoding="utf-8")
    assert read_serve_file(tmp_path) is None
    assert live_server(tmp_path, STORE) is None


def test_only_the_writer_removes_the_file(tmp_path: Path) -> None:
    write_serve_file(tmp_path, ServeInfo("http://127.0.0.1:8000", 4242, STORE, "t" * 20))
    remove_serve_file(tmp_path, os.getpid())  # another serve's file stays
    assert (tmp_path / SERVE_FILE).exists()
    remove_serve_file(tmp_path, 4242)
    assert not (tmp_path / SERVE_FILE).exists()
