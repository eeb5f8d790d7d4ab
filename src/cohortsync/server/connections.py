"""Bounded connections for `cohortsync serve`, closing those too slow to send headers.

uvicorn alone keeps a socket that never completes its request headers open for ever, and its
`limit_concurrency` counts idle sockets, so once they fill it every request (the health check
too) gets 503. Here instead one more socket than `max_connections` closes the connection that
has waited longest for request headers (idle or half-sent), or is itself closed at once when
every open connection is busy with a request; and a connection whose headers are not complete
`header_timeout` seconds after it opened or after its previous response is closed.
A closed connection that had sent part of a request is logged in one line; one that sent
nothing is not (browsers open spare connections they may never use).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cohortsync.identity.log_scrub import scrubbed_logger
from cohortsync.server.limits import ServeLimits

log = scrubbed_logger("cohortsync.server")


class ConnectionGuard:
    """The open connections of one server, and deadlines of those waiting for headers."""

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self._open: set[GuardedHttpProtocol] = set()
        # Insertion order is waiting order: the first entry has waited longest.
        self._waiting: dict[GuardedHttpProtocol, asyncio.TimerHandle] = {}

    def opened(self, connection: GuardedHttpProtocol) -> None:
        """A new socket: make room for it, then wait for its request headers."""
        self._open.add(connection)
        if len(self._open) > self.limits.max_connections:
            oldest = next(iter(self._waiting), None)
            if oldest is None:
                log.warning(
                    "refused a connection from %s: all %d connections are busy "
                    "(serve --max-connections)",
                    _peer(connection),
                    self.limits.max_connections,
                )
                self._close(connection)
                return
            if oldest.partial:
                log.warning(
                    "closed a connection from %s that had sent part of its request headers, "
                    "to make room for a new one (serve --max-connections)",
                    _peer(oldest),
                )
            self._close(oldest)
        self.waiting(connection)

    def waiting(self, connection: GuardedHttpProtocol) -> None:
        """`connection` now waits for request headers (new, or after a response)."""
        self._forget_deadline(connection)
        connection.partial = False
        loop = asyncio.get_running_loop()
        self._waiting[connection] = loop.call_later(
            self.limits.header_timeout, self._expire, connection
        )

    def busy(self, connection: GuardedHttpProtocol) -> None:
        """`connection` delivered complete headers: its request is under way."""
        self._forget_deadline(connection)

    def closed(self, connection: GuardedHttpProtocol) -> None:
        """`connection` is gone."""
        self._open.discard(connection)
        self._forget_deadline(connection)

    def _expire(self, connection: GuardedHttpProtocol) -> None:
        self._waiting.pop(connection, None)
        if connection.partial:
            log.warning(
                "closed a connection from %s: its request headers were not complete within "
                "%g s (serve --header-timeout)",
                _peer(connection),
                self.limits.header_timeout,
            )
        self._close(connection)

    def _close(self, connection: GuardedHttpProtocol) -> None:
        self._open.discard(connection)
        self._forget_deadline(connection)
        connection.transport.close()

    def _forget_deadline(self, connection: GuardedHttpProtocol) -> None:
        handle = self._waiting.pop(connection, None)
        if handle is not None:
            handle.cancel()


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, reporting each connection's phase to a `ConnectionGuard`."""

    guard: ConnectionGuard  # set on the subclass that `guarded_protocol` makes
    partial = False  # bytes of the next request arrived, its headers are not complete yet

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard.opened(self)

    def data_received(self, data: bytes) -> None:
        self.partial = True
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self.guard.busy(self)
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # the next request's headers are already here
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self.guard.waiting(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.closed(self)
        super().connection_lost(exc)


def guarded_protocol(limits: ServeLimits) -> type[GuardedHttpProtocol]:
    """A protocol class for one server: all its connections share one guard."""

    class ServeHttpProtocol(GuardedHttpProtocol):
        guard = ConnectionGuard(limits)

    return ServeHttpProtocol


def _peer(connection: GuardedHttpProtocol) -> str:
    client = connection.client
    return f"{client[0]}:{client[1]}" if client else "an unknown address"
