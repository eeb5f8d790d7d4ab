"""CORS for the ingest routes, so browser SDKs on a shop's own domain can post events.

A preflight carries no write key, so it is answered with the union of every source's
`allowed_origins`: `*` if any source allows any origin, else the request's Origin echoed when
some source lists it. A POST is answered with the policy of the source its write key names
(the union while the key is unknown). A browser POST from an origin its source does not list
is refused with `403 origin_not_allowed` before anything is stored; that answer echoes the
Origin so the SDK can read the refusal instead of seeing a network error.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cohortsync.config.models import Project
from cohortsync.server.body import BodyError

ANY = "*"
MAX_AGE = 7200  # seconds; Chromium caps a cached preflight at two hours
_METHODS = b"POST, OPTIONS"
_SOURCE = "cors_source"  # request.state key holding the authenticated source's name


@dataclass(frozen=True)
class OriginPolicy:
    """Which web origins may read answers, per source and for requests of no known source."""

    by_source: Mapping[str, frozenset[str]]
    union: frozenset[str]
    """What a request of no known source gets: every source's origins (`*` with no source)."""

    @classmethod
    def of(cls, project: Project) -> OriginPolicy:
        """The policy the project file's `sources.NAME.allowed_origins` declare."""
        by_source = {name: frozenset(s.allowed_origins) for name, s in project.sources.items()}
        union = frozenset().union(*by_source.values()) if by_source else frozenset((ANY,))
        return cls(by_source, union)

    def _origins(self, source: str | None) -> frozenset[str]:
        return self.union if source is None else self.by_source.get(source, self.union)

    def allows(self, source: str, origin: str) -> bool:
        """Whether a page at `origin` may send events to `source`."""
        origins = self._origins(source)
        return ANY in origins or origin.lower() in origins

    def allow_origin(self, source: str | None, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for an answer (None: send none)."""
        origins = self._origins(source)
        if ANY in origins:
            return ANY
        if origin is None:
            return None
        if source is not None or origin.lower() in origins:
            return origin  # a refused origin still reads its 403
        return None

    def varies(self) -> bool:
        """Whether answers depend on the Origin header (no source allows every origin)."""
        return ANY not in self.union


def check_origin(request: Request, source: str) -> None:
    """Note the authenticated source for the CORS headers; refuse an origin it does not list."""
    request.state.cors_source = source  # read back by CorsMiddleware as _SOURCE
    origin = request.headers.get("origin")
    policy: OriginPolicy = request.app.state.origin_policy
    if origin is not None and not policy.allows(source, origin):
        raise BodyError(
            403,
            "origin_not_allowed",
            f"pages at {origin} may not send to source {source}: "
            f"add it to sources.{source}.allowed_origins",
        )


class CorsMiddleware:
    """Answers preflights on `paths` and adds CORS headers to every answer sent there."""

    def __init__(self, app: ASGIApp, policy: OriginPolicy, paths: Collection[str]) -> None:
        self.app = app
        self.policy = policy
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass through anything but HTTP requests to the ingest paths."""
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        origin = headers.get(b"origin")
        text_origin = origin.decode("latin-1") if origin is not None else None
        if scope["method"] == "OPTIONS":
            await self._preflight(send, text_origin, headers)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                state = scope.get("state") or {}
                allowed = self.policy.allow_origin(state.get(_SOURCE), text_origin)
                message = {
                    **message,
                    "headers": [*message.get("headers", ()), *self._common(allowed)],
                }
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(
        self, send: Send, origin: str | None, headers: Mapping[bytes, bytes]
    ) -> None:
        allowed = self.policy.allow_origin(None, origin)
        answer = [
            (b"access-control-allow-methods", _METHODS),
            (b"access-control-max-age", str(MAX_AGE).encode()),
            (b"allow", _METHODS),
            (b"vary", b"Origin, Access-Control-Request-Headers"),
        ]
        if allowed is not None:
            answer.append((b"access-control-allow-origin", allowed.encode("latin-1")))
        requested = headers.get(b"access-control-request-headers")
        if requested:  # SDKs ask for their own headers (authorization, anonymousid, rsa-*, …)
            answer.append((b"access-control-allow-headers", requested))
        await send({"type": "http.response.start", "status": 204, "headers": answer})
        await send({"type": "http.response.body", "body": b""})

    def _common(self, allowed: str | None) -> list[tuple[bytes, bytes]]:
        common = []
        if allowed is not None:
            common.append((b"access-control-allow-origin", allowed.encode("latin-1")))
        if self.policy.varies():
            common.append((b"vary", b"Origin"))
        return common


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by lower-case name (the last value of a repeated one)."""
    return {name.lower(): value for name, value in scope["headers"]}
