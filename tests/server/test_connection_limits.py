"""`cohortsync serve` stays available to real clients while others hold sockets open.

Idle sockets, half-sent headers and stalled bodies are what anyone with the (public) write
key, or no key at all, can send. Each test runs `cohortsync serve` in a subprocess with short
timeouts and talks to it over loopback with raw sockets.
"""

from __future__ import annotations

import base64
import resource
import selectors
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import WRITE_KEY
from tests.server.serve_process import serving

SILENT = 1_000  # connect and send nothing
HALF_SENT = 1_000  # send part of the request headers, never the end
STALLED = 200  # send headers and 1 KB of a 450 KB body, then nothing
SLACK = 5.0  # seconds past a timeout within which the server must have closed the socket


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def _stalled_request(key: str = WRITE_KEY, length: int = 450_000) -> bytes:
    """Headers of a /v1/batch call announcing `length` bytes of body, and the first 1 KB."""
    head = (
        f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {_basic(key)}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    return head.encode() + b'{"batch":[' + b" " * 1_014


def _open_files_for(count: int) -> None:
    """Let this process hold `count` more sockets, or skip the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256
    if soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the open-file limit ({hard}) cannot hold {wanted} sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _connect(port: int, count: int, first_bytes: bytes = b"") -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if first_bytes:
            sock.sendall(first_bytes)
        sockets.append(sock)
    return sockets


def _close_times(sockets: list[socket.socket], seconds: float) -> dict[int, tuple[float, bytes]]:
    """For each socket the server closed within `seconds`: when (from now) and what it sent."""
    start = time.monotonic()
    selector = selectors.DefaultSelector()
    received: dict[int, bytearray] = {}
    for index, sock in enumerate(sockets):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
        received[index] = bytearray()
    closed: dict[int, tuple[float, bytes]] = {}
    while len(closed) < len(sockets) and time.monotonic() - start < seconds:
        for key, _ in selector.select(timeout=0.2):
            index = key.data
            try:
                chunk = key.fileobj.recv(65_536)  # type: ignore[union-attr]
            except ConnectionResetError:
                chunk = b""
            if chunk:
                received[index] += chunk
                continue
            closed[index] = (time.monotonic() - start, bytes(received[index]))
            selector.unregister(key.fileobj)
    selector.close()
    return closed


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response with a Content-Length (the socket's own timeout bounds it)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65_536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )  # fmt: skip
    while len(body) < length:
        body += sock.recv(65_536)
    return head + b"\r\n\r\n" + body


def _answers_within_a_second(url: str) -> None:
    """/health and a valid /v1/track both answer 200 within 1 s each."""
    with httpx.Client(base_url=url, timeout=1.0) as client:
        started = time.monotonic()
        assert client.get("/health").status_code == 200
        health = time.monotonic() - started
        started = time.monotonic()
        response = client.post(
            "/v1/track",
            json={"userId": "u1", "event": "Still Here"},
            auth=(WRITE_KEY, ""),
        )
        track = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert health < 1.0 and track < 1.0, (health, track)


def test_idle_and_stalled_sockets_are_closed_by_the_timeouts_while_others_are_served(
    project_dir: Path, tmp_path: Path
) -> None:
    _open_files_for(SILENT + HALF_SENT + STALLED)
    header_timeout, body_timeout = 2.0, 3.0
    log = tmp_path / "serve.log"
    options = ("--max-connections", "5000", "--header-timeout", str(header_timeout),
               "--body-timeout", str(body_timeout))  # fmt: skip
    with serving(project_dir, log, *options) as served:
        url, port = served.url, served.port
        stalled = _connect(port, STALLED, _stalled_request())
        httpx.get(f"{url}/health")  # answered after the server read the stalled requests
        silent = _connect(port, SILENT)
        half = _connect(port, HALF_SENT, b"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            _answers_within_a_second(url)
            closed = _close_times(stalled + silent + half, body_timeout + SLACK)
            assert len(closed) == STALLED + SILENT + HALF_SENT, "sockets left open"
            for index, (_, sent) in closed.items():
                if index < STALLED:  # a stalled body is answered before its socket closes
                    assert sent.startswith(b"HTTP/1.1 408 "), sent[:80]
                    assert b'"code":"body_timeout"' in sent
                else:  # headers never ended: there is no request to answer
                    assert sent == b""
            latest_header_close = max(t for i, (t, _) in closed.items() if i >= STALLED)
            assert latest_header_close < header_timeout + SLACK
            _answers_within_a_second(url)
        finally:
            for sock in stalled + silent + half:
                sock.close()
    said = log.read_text()
    assert "Traceback" not in said
    lines = said.splitlines()
    assert sum("serve --body-timeout" in line for line in lines) == STALLED
    assert sum("serve --header-timeout" in line for line in lines) == HALF_SENT  # not SILENT


def test_sockets_past_max_connections_replace_the_longest_idle_ones(
    project_dir: Path, tmp_path: Path
) -> None:
    _open_files_for(SILENT + HALF_SENT + STALLED)
    limit = 300
    log = tmp_path / "serve.log"
    options = ("--max-connections", str(limit), "--header-timeout", "60", "--body-timeout", "60")
    with serving(project_dir, log, *options) as served:
        url, port = served.url, served.port
        stalled = _connect(port, STALLED, _stalled_request())
        httpx.get(f"{url}/health")  # answered after the server read the stalled requests
        idle = _connect(port, SILENT + HALF_SENT)
        try:
            _answers_within_a_second(url)
            closed = _close_times(stalled + idle, 5.0)
            assert not any(index < STALLED for index in closed), "a busy request was dropped"
            sockets = len(stalled) + len(idle)
            still_open = set(range(STALLED, sockets)) - set(closed)
            # The busy requests and the newest idle sockets fill the server's `limit`, less
            # what the client's own connection took: the oldest idle ones made room.
            assert limit - STALLED - 2 <= len(still_open) <= limit - STALLED
            assert still_open == set(range(sockets - len(still_open), sockets))
        finally:
            for sock in stalled + idle:
                sock.close()
    assert "Traceback" not in log.read_text()


def test_wrong_basic_key_is_refused_before_the_body_is_sent(
    project_dir: Path, tmp_path: Path
) -> None:
    with serving(project_dir, tmp_path / "serve.log", "--body-timeout", "60") as served:
        port = served.port
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = _stalled_request(key="wk_not_a_key").split(b"\r\n\r\n")[0] + b"\r\n\r\n"
            sock.sendall(head)  # and no byte of the 450 KB body
            answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:80]
    assert b'"code":"invalid_write_key"' in answer


def test_aborted_upload_logs_one_line_and_no_traceback(project_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with serving(project_dir, log) as served:
        url, port = served.url, served.port
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(_stalled_request())
        deadline = time.monotonic() + 10
        while "disconnected" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        response = httpx.post(f"{url}/v1/track", json={"userId": "u1", "event": "E"},
                              auth=(WRITE_KEY, ""))  # fmt: skip
        assert response.status_code == 200, response.text
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines
    assert "POST /v1/batch" in lines[0] and "disconnected" in lines[0]
