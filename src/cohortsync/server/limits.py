"""What `cohortsync serve` allows a client: connections, and time to send headers and body.

- at most `max_connections` sockets are open (`connections.ConnectionGuard` decides which
  one a new socket replaces);
- request headers must be complete `header_timeout` seconds after the connection opened or
  its previous response ended, or the connection is closed;
- a request body must be complete `body_timeout` seconds after the request began, or the
  request is answered `408 body_timeout` and the connection closed (`BodyDeadline`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cohortsync.identity.log_scrub import scrubbed_logger

if TYPE_CHECKING:
    import socket

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = scrubbed_logger("cohortsync.server")
_SPARE_FILES = 256  # the store, logs and outgoing connections need descriptors too


@dataclass(frozen=True)
class ServeLimits:
    """How many sockets `serve` holds, and how long a client may take to send a request."""

    max_connections: int = 1000
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: int = 5


class BodyTimeoutError(Exception):
    """A request body did not arrive in time; the app answers 408 and closes the connection."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body did not arrive within {seconds:g} s")


class BodyDeadline:
    """ASGI middleware: reading a request body past its deadline raises `BodyTimeoutError`."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        complete = False

        async def receive_in_time() -> Message:
            nonlocal complete
            if complete:  # later calls wait for a disconnect, which has no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(self.seconds) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, receive_in_time, send)


def run_server(
    app: ASGIApp,
    host: str,
    port: int,
    limits: ServeLimits,
    on_listening: Callable[[], None] | None = None,
    on_stopping: Callable[[], None] | None = None,
) -> None:
    """Serve `app` with uvicorn under `limits` until SIGINT or SIGTERM; `on_listening` is
    called once the socket accepts connections, `on_stopping` when shutdown begins (uvicorn
    re-raises SIGTERM once stopped, so nothing after this function runs then)."""
    import uvicorn

    from cohortsync.server.connections import guarded_protocol

    raise_open_file_limit(limits.max_connections + _SPARE_FILES)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(limits),
        ws="none",
        timeout_keep_alive=limits.keep_alive,
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # else uvicorn believes X-Forwarded-For from 127.0.0.1
    )
    server = _listening_server(config, on_listening, on_stopping)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT it stopped on
        server.run()
    if not server.started:
        raise SystemExit(3)  # as uvicorn.run: the server never started (port taken, …)


def raise_open_file_limit(wanted: int) -> None:
    """Raise this process's soft limit on open files towards `wanted` (never past the hard
    limit); warn in one line when the hard limit is lower."""
    if sys.platform == "win32":
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log.warning(
                "the open-file limit is %d, below the %d that serve --max-connections needs: "
                "raise it (ulimit -n) or lower --max-connections",
                target,
                wanted,
            )


def _listening_server(
    config: Any,
    on_listening: Callable[[], None] | None,
    on_stopping: Callable[[], None] | None,
) -> Any:
    """uvicorn's server, calling `on_listening` once its socket accepts connections and
    `on_stopping` when its shutdown begins."""
    import uvicorn

    class ListeningServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and on_listening is not None:
                on_listening()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if on_stopping is not None:
                on_stopping()
            await super().shutdown(sockets)

    return ListeningServer(config)
