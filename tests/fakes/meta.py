"""A fake of Meta's Graph API: Custom Audiences and the Conversions API (destinations.md §1, §2).

Its base URL stands for `https://graph.facebook.com`; every route is under `/v25.0`:

- `GET  /v25.0/act_{ad_account_id}/customaudiences?fields=id,name` lists audiences (paged);
- `POST /v25.0/act_{ad_account_id}/customaudiences` creates one → `{"id": "<digits>"}`;
- `POST /v25.0/{audience_id}/users` adds members; `DELETE` (or `POST` with `method=DELETE`)
  removes them → `{"audience_id", "session_id", "num_received", "num_invalid_entries", …}`;
- `POST /v25.0/{audience_id}/usersreplace` replaces all members, in a session (§1.8);
- `GET  /v25.0/{audience_id}?fields=…` reads an audience (name, approximate counts, status);
- `POST /v25.0/{pixel_id}/events` takes conversions → `{"events_received", "messages", …}`.

Errors use the Graph envelope (§1.7): 190/HTTP 401 for the token, 100/HTTP 400 for bad input.
"""

from __future__ import annotations

import base64
import itertools
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.fakes.base import FakeServer
from tests.fakes.graph import (
    API_VERSION,
    GraphError,
    check_token,
    fbtrace_id,
    graph_params,
    invalid,
    json_param,
    unknown_object,
)
from tests.fakes.meta_audiences import (
    Audience,
    Batch,
    Session,
    Upload,
    parse_payload,
    parse_session,
)
from tests.fakes.meta_capi import EventLedger, parse_events
from tests.fakes.meta_people import KnownPeople
from tests.fakes.meta_replace import IN_PROGRESS, Replacer, replace_error

V = f"/{API_VERSION}"
FILE_SOURCES = frozenset(
    {"USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"}
)
MAX_AUDIENCES = 500
PAGE_SIZE = 25
# Graph throttling codes (§1.7): subcode, message, business-use-case type.
THROTTLES: dict[int, tuple[int | None, str, str]] = {
    4: (1504022, "(#4) Application request limit reached", "ads_management"),
    17: (2446079, "(#17) User request limit reached", "ads_management"),
    32: (None, "(#32) Page request limit reached", "pages"),
    613: (1487742, "(#613) Calls to this api have exceeded the rate limit.", "custom_audience"),
    80003: (
        None,
        "(#80003) There have been too many calls to this ad-account. Wait a bit and try again.",
        "custom_audience",
    ),
}


def graph_fault_body(status: int) -> Mapping[str, Any]:
    """The Graph-shaped body of an injected fault with HTTP `status`."""
    if status == 401:
        return GraphError(190, "Error validating access token", status=401).envelope()
    if status == 429:
        return GraphError(4, THROTTLES[4][1], status=429, subcode=THROTTLES[4][0]).envelope()
    if status >= 500:
        return GraphError(2, "Service temporarily unavailable", status=status).envelope()
    return invalid(f"Injected fault (HTTP {status})").envelope()


@dataclass
class _SessionTotals:
    """What one upload session received so far (num_received is cumulative, §1.7)."""

    received: int = 0
    invalid_entries: int = 0
    finished: bool = False


class MetaFake(FakeServer):
    """Graph API fake: audiences and their members, conversions and their dedupe, faults."""

    def __init__(
        self,
        *,
        token: str | None = None,
        ad_account_id: str = "1234567890",
        pixel_id: str = "987654321012345",
        business_id: str = "555000111222333",
        app_secret: str | None = None,
        hashed_external_ids: bool = False,
    ) -> None:
        """With `hashed_external_ids`, an `EXTERN_ID` (audiences) or `external_id`
        (conversions) that is not a SHA-256 hash is refused with code 100, as the PII columns
        are: the contract of an account whose ids are always hashed (Meta takes either form
        but asks one account to use one consistently, §1.6)."""
        super().__init__(self._build_app(), render=graph_fault_body)
        self.hashed_external_ids = hashed_external_ids
        self.token = token or "EAAfake" + secrets.token_urlsafe(24)
        self.ad_account_id = ad_account_id
        self.pixel_id = pixel_id
        self.business_id = business_id
        self.app_secret = app_secret
        self.duplicate_batches = 0
        self._lock = threading.RLock()
        self._audiences: dict[str, Audience] = {}
        self._batches: list[Batch] = []
        self._seen: set[tuple[str, int, int, str]] = set()
        self._sessions: dict[tuple[str, int], _SessionTotals] = {}
        self._events = EventLedger()
        self._replacer = Replacer()
        self._people = KnownPeople()
        self._ids = itertools.count(23850000000000000 + secrets.randbelow(10**9) * 1000)

    # -- faults in Graph's own shapes --------------------------------------------------------

    def throttle(
        self,
        code: int = 17,
        *,
        times: int | None = None,
        seconds: float | None = None,
        status: int = 400,
        regain_minutes: int = 5,
        retry_after: float | None = None,
        path: str | None = None,
    ) -> None:
        """Answer Graph's rate-limit error `code` (4, 17, 32, 613, 80003) with its usage header.

        Graph signals throttling by error code, usually with HTTP 400 (§1.7); the
        `X-Business-Use-Case-Usage` header carries `estimated_time_to_regain_access` (minutes).
        """
        subcode, message, kind = THROTTLES[code]
        error = GraphError(code, message, status=status, subcode=subcode)
        usage = {
            self.business_id: [
                {
                    "type": kind,
                    "call_count": 100,
                    "total_cputime": 35,
                    "total_time": 40,
                    "estimated_time_to_regain_access": regain_minutes,
                }
            ]
        }
        header = {"X-Business-Use-Case-Usage": orjson.dumps(usage).decode()}
        self.faults.fail(
            status,
            times=times,
            seconds=seconds,
            body=error.envelope(),
            headers=header,
            retry_after=retry_after,
            path=path,
        )

    # -- state for tests ----------------------------------------------------------------------

    @property
    def graph_url(self) -> str:
        """The versioned API root, `<url>/v25.0`."""
        return self.url + V

    def audiences(self) -> dict[str, str]:
        """Audience name → id, for every audience of the ad account."""
        with self._lock:
            return {audience.name: audience.id for audience in self._audiences.values()}

    def audience_count(self, name: str) -> int:
        """How many audiences carry this name (Meta allows duplicates; a retry may create one)."""
        with self._lock:
            return sum(1 for audience in self._audiences.values() if audience.name == name)

    def members(self, audience_name: str, key: str = "EMAIL") -> set[str]:
        """The values of `key` (EMAIL, PHONE, EXTERN_ID, …) across the audience's members."""
        with self._lock:
            return self._named(audience_name).values(key)

    def member_rows(self, audience_name: str) -> list[dict[str, str]]:
        """Every member as the row it was uploaded as (key → value of its non-empty cells)."""
        with self._lock:
            return [dict(member) for member in self._named(audience_name).members]

    def people_in(self, audience_name: str) -> list[dict[str, str]]:
        """The registered known people whose right email or phone hash is a member."""
        with self._lock:
            found: dict[int, dict[str, str]] = {}
            for member in self._named(audience_name).members:
                for key, value in member:
                    person = self._people.who(key, value)
                    if person is not None:
                        found[id(person)] = person
            return list(found.values())

    @property
    def batches(self) -> list[Batch]:
        """Every accepted `/users` request: (audience_id, op, session_id, batch_seq, rows)."""
        with self._lock:
            return list(self._batches)

    @property
    def received_events(self) -> list[dict[str, Any]]:
        """Every conversion event accepted, resends included."""
        with self._lock:
            return list(self._events.received)

    @property
    def effective_events(self) -> list[dict[str, Any]]:
        """Conversion events that count: the first of each (event_name, event_id) in 48 h."""
        with self._lock:
            return list(self._events.effective)

    def known_people(self, people: Iterable[Mapping[str, str]]) -> None:
        """Register raw identities (`email`, `phone`, `fn`, `ln`, `country`); hashes of badly
        normalised forms of them are then refused with code 100."""
        with self._lock:
            self._people.register(people)

    def create_audience(self, name: str, description: str = "") -> str:
        """Create an audience directly, as if it existed before the test; returns its id."""
        with self._lock:
            return self._create(name, description, "USER_PROVIDED_ONLY")

    def edit_audience(
        self, name: str, *, new_name: str | None = None, description: str | None = None
    ) -> None:
        """Rename an audience or change its description, as someone in Ads Manager would."""
        with self._lock:
            audience = self._named(name)
            if new_name is not None:
                audience.name = new_name
            if description is not None:
                audience.description = description

    def seed_members(self, audience_name: str, rows: Iterable[Mapping[str, str]]) -> None:
        """Add members directly (stray members a reconcile must remove)."""
        with self._lock:
            self._named(audience_name).add(dict(row) for row in rows)

    def drop_members(self, audience_name: str, rows: Iterable[Mapping[str, str]]) -> None:
        """Remove members directly (lost members a reconcile must restore)."""
        with self._lock:
            self._named(audience_name).remove(dict(row) for row in rows)

    # -- the app ------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        """The Graph routes; anything else gets Graph's unknown-path error."""
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.add_exception_handler(GraphError, _graph_error)
        app.add_api_route(V + "/act_{account}/customaudiences", self._list, methods=["GET"])
        app.add_api_route(V + "/act_{account}/customaudiences", self._new, methods=["POST"])
        app.add_api_route(V + "/{node}/users", self._users, methods=["POST", "DELETE"])
        app.add_api_route(V + "/{node}/usersreplace", self._replace, methods=["POST"])
        app.add_api_route(V + "/{node}/events", self._conversions, methods=["POST"])
        app.add_api_route(V + "/{node}", self._read, methods=["GET"])
        app.add_api_route("/{rest:path}", self._unknown, methods=_ALL_METHODS)
        return app

    async def _params(self, request: Request) -> dict[str, Any]:
        """The request's parameters, once the token was checked (190 otherwise)."""
        params = await graph_params(request)
        check_token(request, params, self.token, self.app_secret)
        return params

    async def _list(self, account: str, request: Request) -> Response:
        """GET act_{id}/customaudiences: one page of audiences with the requested fields."""
        params = await self._params(request)
        self._check_account(account, request)
        fields = _fields(params)
        limit = _int_param(params, "limit", PAGE_SIZE)
        start = _cursor_index(params.get("after"))
        with self._lock:
            page = [self._render(audience, fields) for audience in self._audiences.values()]
        chunk = page[start : start + limit]
        body: dict[str, Any] = {"data": chunk, "paging": {}}
        if chunk:
            body["paging"]["cursors"] = {
                "before": _cursor(start),
                "after": _cursor(start + len(chunk)),
            }
        if start + limit < len(page):
            body["paging"]["next"] = str(
                request.url.include_query_params(after=_cursor(start + limit))
            )
        return JSONResponse(body)

    async def _new(self, account: str, request: Request) -> Response:
        """POST act_{id}/customaudiences: a customer-file audience (subtype CUSTOM)."""
        params = await self._params(request)
        self._check_account(account, request)
        name = params.get("name")
        if not isinstance(name, str) or not name.strip():
            raise invalid("The parameter name is required", title="Missing name")
        if params.get("subtype") != "CUSTOM":
            raise invalid("subtype must be CUSTOM for a customer-file audience")
        source = params.get("customer_file_source")
        if source not in FILE_SOURCES:
            raise invalid(
                "customer_file_source must be one of " + ", ".join(sorted(FILE_SOURCES)),
                title="Missing customer_file_source",
            )
        description = params.get("description", "")
        with self._lock:
            if len(self._audiences) >= MAX_AUDIENCES:
                raise invalid(f"The ad account already has {MAX_AUDIENCES} custom audiences")
            audience_id = self._create(name, str(description), str(source))
        return JSONResponse({"id": audience_id})

    async def _users(self, node: str, request: Request) -> Response:
        """POST/DELETE {audience_id}/users: add or remove members (§1.3–1.7)."""
        params = await self._params(request)
        audience = self._audience(node, request)
        removing = request.method == "DELETE" or str(params.get("method", "")).upper() == "DELETE"
        payload = json_param(params, "payload", dict)
        session = parse_session(json_param(params, "session", dict, required=False))
        with self._lock:
            upload = self._upload(payload)
            if self._replacer.busy(audience, self.now):
                raise replace_error(IN_PROGRESS, "a replace session is in progress; wait for it")
            body = self._apply(audience, "remove" if removing else "add", session, upload)
        return JSONResponse(body)

    async def _replace(self, node: str, request: Request) -> Response:
        """POST {audience_id}/usersreplace: one batch of a full-replace session (§1.8)."""
        params = await self._params(request)
        audience = self._audience(node, request)
        payload = json_param(params, "payload", dict)
        session = parse_session(json_param(params, "session", dict))
        with self._lock:
            upload = self._upload(payload)
            current = self._replacer.apply(audience, session, upload, self.now)
            self._accept(audience, "replace", session, upload)
        return JSONResponse(
            {
                "account_id": self.ad_account_id,
                "session_id": str(current.session_id),
                "num_received": current.received,
                "num_invalid_entries": current.invalid_entries,
                "invalid_entry_samples": list(upload.samples.values()),
            }
        )

    async def _read(self, node: str, request: Request) -> Response:
        """GET {node}?fields=…: an audience (or the pixel / ad account, id only)."""
        params = await self._params(request)
        fields = _fields(params)
        with self._lock:
            audience = self._audiences.get(node)
            if audience is not None:
                return JSONResponse(self._render(audience, fields))
        if node in (self.pixel_id, f"act_{self.ad_account_id}"):
            return JSONResponse({"id": node})
        raise unknown_object("GET", node)

    async def _conversions(self, node: str, request: Request) -> Response:
        """POST {pixel_id}/events: validate every event, then record them all (§2)."""
        params = await self._params(request)
        if node != self.pixel_id:
            raise unknown_object("POST", node)
        test_code = params.get("test_event_code")
        if test_code is not None and not isinstance(test_code, str):
            raise invalid("test_event_code must be a string")
        data = json_param(params, "data", list)
        now = self.now
        with self._lock:
            events = parse_events(
                data,
                now,
                self._people.badly_normalised,
                hashed_external_id=self.hashed_external_ids,
            )
            self._events.record(self.pixel_id, events, now)
        body = {"events_received": len(events), "messages": [], "fbtrace_id": fbtrace_id()}
        return JSONResponse(body)

    async def _unknown(self, rest: str, request: Request) -> Response:
        """Anything else: Graph's answer to a wrong version, path or method."""
        version, _, tail = rest.partition("/")
        if version != API_VERSION and version.startswith("v") and "." in version:
            raise GraphError(
                2635,
                f"(#2635) You are calling a deprecated version of the Ads API. "
                f"Please update to the latest version: {API_VERSION}.",
            )
        raise unknown_object(request.method, tail or rest)

    # -- state changes (called under the lock) -------------------------------------------------

    def _upload(self, payload: dict[str, Any]) -> Upload:
        """A validated customer-file payload, under this account's rules."""
        return parse_payload(
            payload, self._people.badly_normalised, hashed_extern_id=self.hashed_external_ids
        )

    def _create(self, name: str, description: str, source: str) -> str:
        """Store a new audience under a fresh numeric id."""
        audience_id = str(next(self._ids))
        created = int(self.now.timestamp())
        self._audiences[audience_id] = Audience(audience_id, name, description, source, created)
        return audience_id

    def _apply(
        self, audience: Audience, op: str, session: Session, upload: Upload
    ) -> dict[str, Any]:
        """Apply one validated batch, note resends, and build the §1.7 success body."""
        session_id = session.session_id or secrets.randbelow(2**62) + 1
        totals = self._sessions.setdefault((audience.id, session_id), _SessionTotals())
        if totals.finished and _batch_key(audience, op, session) not in self._seen:
            raise invalid(
                f"Upload session {session_id} already finished (last_batch_flag was sent); "
                "start a new session_id",
                title="Session finished",
            )
        if op == "add":
            audience.add(upload.rows)
        else:
            audience.remove(upload.rows)
        self._accept(audience, op, session, upload)
        totals.received += upload.received
        totals.invalid_entries += upload.invalid_entries
        totals.finished = totals.finished or session.last_batch_flag
        return {
            "audience_id": audience.id,
            "session_id": str(session_id),
            "num_received": totals.received,
            "num_invalid_entries": totals.invalid_entries,
            "invalid_entry_samples": upload.samples,
        }

    def _accept(self, audience: Audience, op: str, session: Session, upload: Upload) -> None:
        """Record an applied batch; count it as a resend if its (session, seq, op) was seen."""
        key = _batch_key(audience, op, session)
        if key is not None:
            if key in self._seen:
                self.duplicate_batches += 1
            self._seen.add(key)
        self._batches.append(
            Batch(audience.id, op, session.session_id, session.batch_seq, upload.rows)
        )

    def _render(self, audience: Audience, fields: list[str]) -> dict[str, Any]:
        """An audience with the requested fields (its status says when a replace runs)."""
        replacing = self._replacer.busy(audience, self.now)
        return _audience_fields(audience, fields, self.ad_account_id, replacing)

    def _audience(self, node: str, request: Request) -> Audience:
        """The audience with this id, or Graph's unknown-object error."""
        with self._lock:
            audience = self._audiences.get(node)
        if audience is None:
            raise unknown_object(request.method, node)
        return audience

    def _named(self, name: str) -> Audience:
        """The audience called `name` (the newest if a retry created two)."""
        matches = [audience for audience in self._audiences.values() if audience.name == name]
        if not matches:
            known = ", ".join(sorted(a.name for a in self._audiences.values())) or "none"
            raise KeyError(f"no audience named {name!r} in the fake (audiences: {known})")
        return matches[-1]

    def _check_account(self, account: str, request: Request) -> None:
        """Code 100 / subcode 33 unless the path names this fake's ad account."""
        if account != self.ad_account_id:
            raise unknown_object(request.method, f"act_{account}")


_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_AUDIENCE_FIELDS = frozenset(
    {
        "id",
        "name",
        "description",
        "subtype",
        "customer_file_source",
        "account_id",
        "approximate_count_lower_bound",
        "approximate_count_upper_bound",
        "operation_status",
        "delivery_status",
        "time_created",
        "time_updated",
    }
)


async def _graph_error(request: Request, exc: Exception) -> Response:
    """Exception handler: a raised GraphError becomes its envelope."""
    assert isinstance(exc, GraphError)
    return exc.response()


def _fields(params: Mapping[str, Any]) -> list[str]:
    """The `fields` parameter as a list (Graph returns `id` alone when none are asked)."""
    raw = params.get("fields") or "id"
    if not isinstance(raw, str):
        raise invalid("fields must be a comma-separated list of field names")
    return [name.strip() for name in raw.split(",") if name.strip()]


def _batch_key(audience: Audience, op: str, session: Session) -> tuple[str, int, int, str] | None:
    """What identifies a batch for resend detection, when the client sent a session."""
    if session.session_id is None or session.batch_seq is None:
        return None
    return (audience.id, session.session_id, session.batch_seq, op)


def _audience_fields(
    audience: Audience, fields: list[str], account_id: str, replacing: bool = False
) -> dict[str, Any]:
    """An audience rendered with the requested fields; code 100 for a field Graph lacks."""
    for name in fields:
        if name not in _AUDIENCE_FIELDS:
            raise invalid(
                f"Tried accessing nonexisting field ({name}) on node type (CustomAudience)"
            )
    size = len(audience.members)
    values: dict[str, Any] = {
        "id": audience.id,
        "name": audience.name,
        "description": audience.description,
        "subtype": "CUSTOM",
        "customer_file_source": audience.customer_file_source,
        "account_id": account_id,
        "approximate_count_lower_bound": size,
        "approximate_count_upper_bound": size,
        "operation_status": (
            {"description": "replace_in_progress"}
            if replacing
            else {"code": 200, "description": "Normal"}
        ),
        "delivery_status": {"code": 200, "description": "This audience is ready for use."},
        "time_created": audience.time_created,
        "time_updated": audience.time_created,
    }
    return {name: values[name] for name in ["id", *fields] if name in values}


def _int_param(params: Mapping[str, Any], name: str, default: int) -> int:
    """A positive integer parameter such as `limit`, with its default."""
    raw = params.get(name, default)
    if isinstance(raw, str) and raw.isdigit():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise invalid(f"{name} must be a positive integer")
    return raw


def _cursor(index: int) -> str:
    """An opaque paging cursor, as Graph's are."""
    return base64.urlsafe_b64encode(str(index).encode()).decode()


def _cursor_index(cursor: Any) -> int:
    """The list position a paging cursor points at (0 without one)."""
    if cursor is None:
        return 0
    try:
        return int(base64.urlsafe_b64decode(str(cursor).encode()).decode())
    except ValueError:
        raise invalid("Invalid paging cursor") from None
