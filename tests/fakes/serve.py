"""Serve an ASGI app with real uvicorn on a loopback port, in a background thread.

The socket is bound before uvicorn starts (port 0, chosen by the kernel), so two fakes never
race for the same port; tests then talk to the app over real HTTP.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

START_TIMEOUT = 10.0
GRACEFUL_SHUTDOWN = 2


@contextmanager
def running(app: ASGIApp) -> Iterator[str]:
    """Run `app` on 127.0.0.1 until the block ends; yields its base URL (`http://127.0.0.1:N`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait_started(server, thread)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(server, thread)
        sock.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    """Block until uvicorn accepts connections, or fail if its thread died first."""
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the fake server did not start; see the uvicorn log above")
        time.sleep(0.01)


def _stop(server: uvicorn.Server, thread: threading.Thread) -> None:
    """Ask uvicorn to exit, then insist if in-flight requests keep it busy."""
    server.should_exit = True
    thread.join(timeout=GRACEFUL_SHUTDOWN + 3)
    if thread.is_alive():
        server.force_exit = True
        thread.join(timeout=5)
