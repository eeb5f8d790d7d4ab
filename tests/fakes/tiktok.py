"""A fake of TikTok's Business API v1.3 (more-destinations.md §2, destinations.md §5, §10).

Its base URL stands for `https://business-api.tiktok.com`; every route is under
`/open_api/v1.3`:

- `POST /segment/audience/` `{"advertiser_id", "custom_audience_name", "action": "create"}`
  creates an audience → `data.audience_id`;
- `GET /dmp/custom_audience/list/?advertiser_id=&page=&page_size=` (≤ 100) lists them →
  `data.list[{audience_id, name}]`, `data.page_info`;
- `POST /segment/mapping/` adds or deletes members, rows aligned with `id_schema`;
- `POST /event/track/` takes ≤ 1,000 Events API 2.0 events; an `(event, event_id)` seen in the
  last 48 hours counts once.

Every call needs the `Access-Token` header (40104 when missing, 40105 when wrong, 40102 once
`expire_token` was called). Refusals come with HTTP 200 and a non-zero `code`
(`tiktok_rules.py`); injected HTTP faults (`fail`, `timeout`, `script`) carry the same envelope.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cohortsync.destinations.registry import known_types
from tests.fakes.base import FakeServer
from tests.fakes.tiktok_rules import (
    MAX_NAME,
    NOT_EXIST,
    PARAMS,
    PERMISSION,
    SYSTEM,
    TOKEN_EMPTY,
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    TOO_FREQUENT,
    TiktokError,
    envelope,
    parse_events,
    parse_mapping,
    require,
)

V = "/open_api/v1.3"
PAGE_SIZE_MAX = 100
DEDUPE_WINDOW = timedelta(hours=48)


def tiktok_fault_body(status: int) -> Mapping[str, Any]:
    """The envelope of an injected HTTP fault: token, rate-limit or system error."""
    if status in (401, 403):
        return envelope(TOKEN_INVALID, "Access token is incorrect or has been revoked")
    if status == 429:
        return envelope(TOO_FREQUENT, "Requests made too frequently")
    if status >= 500:
        return envelope(SYSTEM, "System error")
    return envelope(PARAMS, f"Injected fault (HTTP {status})")


class TiktokFake(FakeServer):
    """Business API fake: audiences and members, Events API events and their dedupe, faults."""

    def __init__(
        self,
        *,
        token: str | None = None,
        advertiser_id: str = "7012345678901234567",
        pixel_code: str = "CPIXEL0123456789ABCD",
    ) -> None:
        super().__init__(self._build_app(), render=tiktok_fault_body)
        self.token = token or "tt" + secrets.token_hex(20)
        self.advertiser_id = advertiser_id
        self.pixel_code = pixel_code
        self.mapping_calls = 0
        self._expired = False
        self._lock = threading.RLock()
        self._names: dict[str, str] = {}
        self._members: dict[str, set[tuple[str, str]]] = {}
        self._received: list[dict[str, Any]] = []
        self._effective: list[dict[str, Any]] = []
        self._first_seen: dict[tuple[str, str], datetime] = {}
        self._ids = itertools.count(1_780_000_000_000_000_000 + secrets.randbelow(10**9))

    # -- faults in TikTok's own shape ----------------------------------------------------------

    def refuse(
        self,
        code: int,
        *,
        times: int | None = None,
        seconds: float | None = None,
        message: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer HTTP 200 with `code` (40100/40132 throttle, 40062, 4010x token, …)."""
        body = TiktokError(code, message)
        self.faults.fail(
            200,
            times=times,
            seconds=seconds,
            body=envelope(code, body.message),
            path=path,
        )

    def expire_token(self) -> None:
        """From now on the token is refused as expired (40102) until `renew_token`."""
        self._expired = True

    def renew_token(self) -> None:
        """The token is accepted again."""
        self._expired = False

    # -- state for tests ----------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """The versioned API root, `<url>/open_api/v1.3`."""
        return self.url + V

    def audiences(self) -> dict[str, str]:
        """Audience name → id (the lowest id where a name repeats)."""
        with self._lock:
            found: dict[str, str] = {}
            for audience_id, name in sorted(self._names.items(), key=lambda p: _order(p[0])):
                found.setdefault(name, audience_id)
            return found

    def audience_count(self, name: str) -> int:
        """How many audiences carry this name."""
        with self._lock:
            return sum(1 for each in self._names.values() if each == name)

    def create_audience(self, name: str) -> str:
        """Create an audience directly, as if it existed before the test; returns its id."""
        with self._lock:
            return self._create(name)

    def members(self, name: str, schema: str = "EMAIL_SHA256") -> set[str]:
        """The hashed ids of `schema` that are members of the audience named `name`."""
        with self._lock:
            audience_id = self.audiences()[name]
            return {value for kind, value in self._members[audience_id] if kind == schema}

    @property
    def received_events(self) -> list[dict[str, Any]]:
        """Every event accepted, resends included."""
        with self._lock:
            return list(self._received)

    @property
    def effective_events(self) -> list[dict[str, Any]]:
        """Events that count: the first of each (event, event_id) within 48 hours."""
        with self._lock:
            return list(self._effective)

    # -- the app ------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.add_exception_handler(TiktokError, _answer_error)
        app.add_api_route(V + "/segment/audience/", self._create_route, methods=["POST"])
        app.add_api_route(V + "/dmp/custom_audience/list/", self._list, methods=["GET"])
        app.add_api_route(V + "/segment/mapping/", self._mapping, methods=["POST"])
        app.add_api_route(V + "/event/track/", self._track, methods=["POST"])
        app.add_api_route("/{rest:path}", self._unknown, methods=["GET", "POST", "PUT", "DELETE"])
        return app

    def _check_token(self, request: Request) -> None:
        """40104 without `Access-Token`, 40105 for a wrong one, 40102 once expired."""
        token = request.headers.get("access-token", "")
        if not token.strip():
            raise TiktokError(TOKEN_EMPTY)
        if token != self.token:
            raise TiktokError(TOKEN_INVALID)
        if self._expired:
            raise TiktokError(TOKEN_EXPIRED)

    async def _body(self, request: Request) -> dict[str, Any]:
        """The token checked, then the JSON object body (40002 otherwise)."""
        self._check_token(request)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise TiktokError(PARAMS, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise TiktokError(PARAMS, "request body must be a JSON object")
        return body

    async def _create_route(self, request: Request) -> Response:
        """Create an audience under a name (≤ 128 characters)."""
        body = await self._body(request)
        self._check_advertiser(require(body, "advertiser_id", str))
        name = require(body, "custom_audience_name", str)
        if len(name) > MAX_NAME:
            raise TiktokError(PARAMS, f"custom_audience_name: at most {MAX_NAME} characters")
        if body.get("action") != "create":
            raise TiktokError(PARAMS, "action: must be create")
        with self._lock:
            audience_id = self._create(name)
        return JSONResponse(envelope(data={"audience_id": audience_id}))

    async def _list(self, request: Request) -> Response:
        """One page of the advertiser's audiences, oldest first."""
        self._check_token(request)
        query = request.query_params
        self._check_advertiser(query.get("advertiser_id", ""))
        page, size = _positive(query.get("page", "1")), _positive(query.get("page_size", "10"))
        if size > PAGE_SIZE_MAX:
            raise TiktokError(PARAMS, f"page_size: at most {PAGE_SIZE_MAX}")
        with self._lock:
            listed = sorted(self._names.items(), key=lambda p: _order(p[0]))
        chunk = listed[(page - 1) * size : page * size]
        total_page = max(1, -(-len(listed) // size))
        data = {
            "list": [{"audience_id": a, "name": n} for a, n in chunk],
            "page_info": {
                "page": page,
                "page_size": size,
                "total_number": len(listed),
                "total_page": total_page,
            },
        }
        return JSONResponse(envelope(data=data))

    async def _mapping(self, request: Request) -> Response:
        """Add or delete members; every audience named must exist."""
        body = await self._body(request)
        mapping = parse_mapping(body, self.advertiser_id)
        with self._lock:
            for _, _, audience_ids in mapping.cells:
                for audience_id in audience_ids:
                    if audience_id not in self._names:
                        raise TiktokError(NOT_EXIST, f"audience {audience_id} does not exist")
            for schema, value, audience_ids in mapping.cells:
                for audience_id in audience_ids:
                    held = self._members[audience_id]
                    if mapping.op == "add":
                        held.add((schema, value))
                    else:
                        held.discard((schema, value))
            self.mapping_calls += 1
        return JSONResponse(envelope())

    async def _track(self, request: Request) -> Response:
        """Validate every event, then record them all; dedupe by (event, event_id) for 48 h."""
        body = await self._body(request)
        events = parse_events(body, self.pixel_code)
        now = self.now
        with self._lock:
            for event in events:
                self._received.append(event)
                event_id = event.get("event_id")
                if event_id is None:
                    self._effective.append(event)
                    continue
                key = (str(event["event"]), str(event_id))
                seen = self._first_seen.get(key)
                if seen is None or now - seen >= DEDUPE_WINDOW:
                    self._first_seen[key] = now
                    self._effective.append(event)
        return JSONResponse(envelope())

    async def _unknown(self, rest: str) -> Response:
        return JSONResponse(envelope(NOT_EXIST, f"unknown path /{rest}"), status_code=404)

    def _check_advertiser(self, advertiser_id: str) -> None:
        if advertiser_id != self.advertiser_id:
            raise TiktokError(PERMISSION, "no permission for this advertiser")

    def _create(self, name: str) -> str:
        audience_id = str(next(self._ids))
        self._names[audience_id] = name
        self._members[audience_id] = set()
        return audience_id


def tiktok_type(kind: str) -> str:
    """The `type:` of a TikTok destination: its registered name once cohortsync is installed
    with it, else its class path."""
    if kind in known_types():
        return kind
    module = "cohortsync.destinations." + kind
    return f"{module}:{''.join(part.title() for part in kind.split('_'))}Destination"


async def _answer_error(request: Request, exc: Exception) -> Response:
    """A raised TiktokError becomes HTTP 200 with its code, as TikTok answers."""
    assert isinstance(exc, TiktokError)
    return JSONResponse(envelope(exc.code, exc.message))


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise TiktokError(PARAMS, "page and page_size must be positive integers")
    return int(raw)


def _order(audience_id: str) -> tuple[int, str]:
    return (len(audience_id), audience_id)
