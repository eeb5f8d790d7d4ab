"""A fake of Google's Data Manager API: Customer Match and conversions (more-destinations.md §1).

Its base URL stands for `https://datamanager.googleapis.com`:

- `POST /v1/audienceMembers:ingest` and `:remove` (≤ 10,000 members, ≤ 10 identifiers each);
- `POST /v1/events:ingest` (≤ 2,000 events); all three answer `{"requestId"}`;
- `GET  /v1/requestStatus:retrieve?requestId=…`: PROCESSING, then (once `processing_seconds`
  passed on the fake's clock) SUCCESS with `uploadMatchRateRange`, or PARTIAL_SUCCESS with the
  error counts a test set;
- `POST /v1/audienceMembers:removeAll` (2026-07): every member of each destination's list
  gone, `removeAsOfTime` never in the future;
- `GET|POST /v1/accountTypes/GOOGLE_ADS/accounts/{id}/userLists`: list (paged) and create
  (`DISPLAY_NAME_ALREADY_USED` on a name taken); `GET …/userLists/{id}`: one list, each with
  `sizeInfo` (the member count per network, int64 as strings);
- `POST /token`: an OAuth token endpoint for `refresh_token` and service-account JWT grants.

Every API call needs `Authorization: Bearer <token>` with the datamanager scope. One bad record
fails the whole request (§1.9). Quota: `quota_per_minute` requests per `quota_window` seconds
per service (ingestion mutate, ingestion read, user lists) → 429 RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import base64
import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.fakes.base import FakeServer
from tests.fakes.google_requests import (
    EVENTS_FIELDS,
    INGEST_FIELDS,
    REMOVE_ALL_FIELDS,
    REMOVE_FIELDS,
    KnownPeople,
    check_consent,
    check_encoding,
    check_fields,
    check_terms,
    parse_destinations,
    parse_events,
    parse_members,
    parse_timestamp,
)
from tests.fakes.google_rpc import RpcError, fault_body, invalid, request_id

SCOPE = "https://www.googleapis.com/auth/datamanager"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_DURATION_DAYS = 540
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@dataclass
class UserList:
    """A Customer Match user list and its members (each the set of its identifier keys)."""

    id: str
    display_name: str
    description: str
    account_id: str
    body: dict[str, Any]
    members: set[frozenset[str]] = field(default_factory=set)

    def add(self, members: Iterable[list[str]]) -> None:
        """Add each member (re-adding one changes nothing)."""
        self.members.update(frozenset(m) for m in members)

    def remove(self, members: Iterable[list[str]]) -> None:
        """Remove every member sharing any identifier with a removed one."""
        gone = {key for member in members for key in member}
        self.members = {m for m in self.members if not m & gone}

    def render(self) -> dict[str, Any]:
        """The `UserList` resource."""
        return {
            **self.body,
            "name": f"accountTypes/GOOGLE_ADS/accounts/{self.account_id}/userLists/{self.id}",
            "id": self.id,
            "displayName": self.display_name,
            "membershipStatus": "OPEN",
            "sizeInfo": {
                "displayNetworkMembersCount": str(len(self.members)),
                "searchNetworkMembersCount": str(len(self.members)),
            },
        }


@dataclass
class Diagnostic:
    """What `requestStatus:retrieve` reports about one accepted request."""

    kind: str
    destinations: list[dict[str, Any]]
    at: datetime
    records: int
    identifiers: int


class GoogleDataManagerFake(FakeServer):
    """Data Manager API fake: user lists, members, events, diagnostics, OAuth, quota, faults."""

    def __init__(
        self,
        *,
        account_id: str = "1234567890",
        conversion_action_ids: Iterable[str] = ("700000001",),
        quota_per_minute: int = 300,
        quota_window: float = 60.0,
        processing_seconds: float = 1800.0,
        token_lifetime: int = 3600,
    ) -> None:
        super().__init__(self._build_app(), render=fault_body)
        self.account_id = account_id
        self.conversion_action_ids = set(conversion_action_ids)
        self.quota_per_minute = quota_per_minute
        self.quota_window = quota_window
        self.processing_seconds = processing_seconds
        self.token_lifetime = token_lifetime
        self.client_id = "fake-client.apps.googleusercontent.com"
        self.client_secret = "fake-secret-" + secrets.token_urlsafe(8)
        self.refresh_token = "1//fake-refresh-" + secrets.token_urlsafe(16)
        self.match_rate = "MATCH_RATE_RANGE_41_TO_50"
        self.error_counts: dict[str, int] = {}
        self.throttled = 0
        self._lock = threading.RLock()
        self._tokens: dict[str, tuple[float, str]] = {}
        self._lists: dict[str, UserList] = {}
        self._diagnostics: dict[str, Diagnostic] = {}
        self._events: list[dict[str, Any]] = []
        self._calls: dict[str, deque[float]] = {}
        self._people = KnownPeople()
        self._ids = itertools.count(9_100_000_000 + secrets.randbelow(10**6) * 100)

    # -- state for tests ----------------------------------------------------------------------

    @property
    def token_url(self) -> str:
        """Where credentials refresh their access tokens."""
        return self.base_url + "/token"

    def issue_token(self, lifetime: int | None = None, scope: str = SCOPE) -> str:
        """A fresh access token, as the token endpoint would grant it."""
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = (time.time() + (lifetime or self.token_lifetime), scope)
        return token

    def revoke_tokens(self) -> None:
        """Make every access token granted so far invalid (401 on its next use)."""
        with self._lock:
            self._tokens.clear()

    def known_people(self, people: Iterable[Mapping[str, str]]) -> None:
        """Register raw `email`/`phone`; hashes of wrongly normalised forms are then refused."""
        with self._lock:
            self._people.register(people)

    def create_user_list(self, name: str, description: str = "") -> str:
        """Create a user list directly, as if it existed before the test; returns its id."""
        with self._lock:
            return self._create(name, description, {}).id

    def user_lists(self) -> dict[str, str]:
        """Display name → id of every user list."""
        with self._lock:
            return {ul.display_name: ul.id for ul in self._lists.values()}

    def members(self, name: str, kind: str = "email") -> set[str]:
        """The hashes of one identifier kind across the members of the named list."""
        with self._lock:
            user_list = next(ul for ul in self._lists.values() if ul.display_name == name)
            prefix = kind + ":"
            return {k[len(prefix) :] for m in user_list.members for k in m if k.startswith(prefix)}

    def member_sets(self) -> dict[str, set[frozenset[str]]]:
        """Every list's members, for state comparisons."""
        with self._lock:
            return {ul.display_name: set(ul.members) for ul in self._lists.values()}

    def seed_members(self, name: str, members: Iterable[Iterable[str]]) -> None:
        """Add members directly (`email:<hash>` keys): strays a reconcile must remove."""
        with self._lock:
            self._named(name).add([list(m) for m in members])

    def drop_members(self, name: str, count: int) -> None:
        """Remove `count` members directly (the first in sorted order): lost members."""
        with self._lock:
            user_list = self._named(name)
            gone = sorted(sorted(m) for m in user_list.members)[:count]
            user_list.members -= {frozenset(m) for m in gone}

    def _named(self, name: str) -> UserList:
        return next(ul for ul in self._lists.values() if ul.display_name == name)

    @property
    def received_events(self) -> list[dict[str, Any]]:
        """Every event accepted, resends included."""
        with self._lock:
            return list(self._events)

    @property
    def effective_events(self) -> list[dict[str, Any]]:
        """Events that count: the first per transactionId (later ones are duplicates)."""
        with self._lock:
            seen: set[str] = set()
            kept = []
            for event in self._events:
                key = event.get("transactionId")
                if key is None or key not in seen:
                    kept.append(event)
                if key is not None:
                    seen.add(key)
            return kept

    @property
    def request_ids(self) -> list[str]:
        """Every requestId handed out for an accepted, executed request."""
        with self._lock:
            return list(self._diagnostics)

    # -- the app ------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.add_exception_handler(RpcError, _rpc_error)
        app.add_api_route("/token", self._token, methods=["POST"])
        app.add_api_route("/v1/audienceMembers:ingest", self._ingest, methods=["POST"])
        app.add_api_route("/v1/audienceMembers:remove", self._remove, methods=["POST"])
        app.add_api_route("/v1/audienceMembers:removeAll", self._remove_all, methods=["POST"])
        app.add_api_route("/v1/events:ingest", self._events_ingest, methods=["POST"])
        app.add_api_route("/v1/requestStatus:retrieve", self._status, methods=["GET"])
        lists = "/v1/accountTypes/{account_type}/accounts/{account}/userLists"
        app.add_api_route(lists, self._list_user_lists, methods=["GET"])
        app.add_api_route(lists, self._create_user_list, methods=["POST"])
        app.add_api_route(lists + "/{list_id}", self._get_user_list, methods=["GET"])
        app.add_api_route("/{rest:path}", self._unknown, methods=_ALL_METHODS)
        return app

    async def _token(self, request: Request) -> Response:
        """OAuth 2.0 token endpoint: refresh-token and JWT-bearer grants."""
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        grant = form.get("grant_type")
        scope = SCOPE
        if grant == "refresh_token":
            ok = (
                form.get("refresh_token") == self.refresh_token
                and form.get("client_id") == self.client_id
                and form.get("client_secret") == self.client_secret
            )
            scope = form.get("scope") or SCOPE
        elif grant == JWT_GRANT:
            claims = _jwt_claims(form.get("assertion", ""))
            audiences = (self.token_url, GOOGLE_TOKEN_URI)  # google-auth always names Google's
            ok = claims.get("aud") in audiences and bool(claims.get("iss"))
            scope = str(claims.get("scope", ""))
        else:
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if not ok:
            return JSONResponse(
                {"error": "invalid_grant", "error_description": "Bad Request"}, status_code=400
            )
        token = self.issue_token(scope=scope)
        body = {
            "access_token": token,
            "expires_in": self.token_lifetime,
            "token_type": "Bearer",
            "scope": scope,
        }
        return JSONResponse(body)

    def _authorize(self, request: Request, service: str) -> None:
        """401 without a live bearer token, 403 without the scope, 429 over quota."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self._lock:
            granted = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if granted is None or granted[0] <= time.time():
            raise RpcError(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
                reason="ACCESS_TOKEN_EXPIRED" if granted else "CREDENTIALS_MISSING",
            )
        if SCOPE not in granted[1].split():
            raise RpcError(
                403,
                "Request had insufficient authentication scopes.",
                reason="ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            )
        self._count(service)

    def _count(self, service: str) -> None:
        """Count one request against its service's per-minute quota."""
        now = time.monotonic()
        with self._lock:
            calls = self._calls.setdefault(service, deque())
            while calls and calls[0] <= now - self.quota_window:
                calls.popleft()
            if len(calls) >= self.quota_per_minute:
                self.throttled += 1
                raise RpcError(
                    429,
                    f"Quota exceeded for quota metric '{service}' and limit "
                    f"'{service} per minute per project'",
                    reason="RATE_LIMIT_EXCEEDED",
                    metadata={"quota_limit": f"{service}PerMinutePerProject"},
                )
            calls.append(now)

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise invalid("Invalid JSON payload received.", "INVALID_ARGUMENT") from None
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object.", "INVALID_ARGUMENT")
        return body

    def _targets(self, body: Mapping[str, Any]) -> list[UserList]:
        """The user lists named by `destinations`, each in the operating account."""
        found = []
        for index, destination in enumerate(parse_destinations(body)):
            where = f"destinations[{index}]"
            if destination.account_id != self.account_id:
                raise RpcError(
                    403,
                    "The caller does not have access to the operating account.",
                    reason="PERMISSION_DENIED",
                    field=where + ".operating_account",
                )
            user_list = self._lists.get(destination.product_destination_id)
            if user_list is None:
                raise invalid(
                    "No user list with that id in the operating account",
                    "INVALID_USER_LIST_ID",
                    where + ".product_destination_id",
                )
            found.append(user_list)
        return found

    async def _ingest(self, request: Request) -> Response:
        """audienceMembers:ingest: add members to every destination's user list."""
        self._authorize(request, "IngestionMutateRequests")
        body = await self._body(request)
        check_fields(body, INGEST_FIELDS)
        with self._lock:
            targets = self._targets(body)
            encoding = check_encoding(body)
            check_terms(body)
            check_consent(body.get("consent"), "consent")
            members = parse_members(body, encoding, self._people)
            if body.get("validateOnly") is True:
                return JSONResponse({"requestId": request_id()})
            for user_list in targets:
                user_list.add(members)
            return JSONResponse({"requestId": self._record("ingest", body, members)})

    async def _remove(self, request: Request) -> Response:
        """audienceMembers:remove: no termsOfService and no consent (§1.3)."""
        self._authorize(request, "IngestionMutateRequests")
        body = await self._body(request)
        check_fields(body, REMOVE_FIELDS)
        with self._lock:
            targets = self._targets(body)
            members = parse_members(body, check_encoding(body), self._people)
            if body.get("validateOnly") is True:
                return JSONResponse({"requestId": request_id()})
            for user_list in targets:
                user_list.remove(members)
            return JSONResponse({"requestId": self._record("remove", body, members)})

    async def _remove_all(self, request: Request) -> Response:
        """audienceMembers:removeAll: `destinations`, `removeAsOfTime` (not in the future),
        `validateOnly`; every member of each list goes (§1.1)."""
        self._authorize(request, "IngestionMutateRequests")
        body = await self._body(request)
        check_fields(body, REMOVE_ALL_FIELDS)
        with self._lock:
            targets = self._targets(body)
            raw = body.get("removeAsOfTime")
            if raw is not None and parse_timestamp(raw, "remove_as_of_time") > self.now:
                raise invalid(
                    "removeAsOfTime must not be in the future",
                    "INVALID_ARGUMENT",
                    "remove_as_of_time",
                )
            if body.get("validateOnly") is True:
                return JSONResponse({"requestId": request_id()})
            gone = 0
            for user_list in targets:
                gone += len(user_list.members)
                user_list.members = set()
            rid = request_id()
            self._diagnostics[rid] = Diagnostic(
                "removeAll", list(body["destinations"]), self.now, gone, 0
            )
            return JSONResponse({"requestId": rid})

    async def _events_ingest(self, request: Request) -> Response:
        """events:ingest: conversions for known conversion actions."""
        self._authorize(request, "IngestionMutateRequests")
        body = await self._body(request)
        check_fields(body, EVENTS_FIELDS)
        with self._lock:
            for index, destination in enumerate(parse_destinations(body)):
                if destination.product_destination_id not in self.conversion_action_ids:
                    raise invalid(
                        "Unknown conversion action",
                        "INVALID_CONVERSION_ACTION_ID",
                        f"destinations[{index}].product_destination_id",
                    )
            check_consent(body.get("consent"), "consent")
            events = parse_events(body, self._people, self.now)
            if body.get("validateOnly") is True:
                return JSONResponse({"requestId": request_id()})
            self._events.extend({k: v for k, v in e.items() if k != "_keys"} for e in events)
            keys = [e["_keys"] for e in events]
            return JSONResponse({"requestId": self._record("events", body, keys)})

    def _record(self, kind: str, body: Mapping[str, Any], members: list[list[str]]) -> str:
        rid = request_id()
        self._diagnostics[rid] = Diagnostic(
            kind, list(body["destinations"]), self.now, len(members), sum(map(len, members))
        )
        return rid

    async def _status(self, request: Request) -> Response:
        """requestStatus:retrieve: PROCESSING, then terminal with the match-rate bucket."""
        self._authorize(request, "IngestionReadRequests")
        rid = request.query_params.get("requestId", "")
        with self._lock:
            diagnostic = self._diagnostics.get(rid)
            if diagnostic is None:
                raise invalid("Unknown request id", "INVALID_REQUEST_ID", "request_id")
            done = self.now >= diagnostic.at + timedelta(seconds=self.processing_seconds)
            return JSONResponse(
                {
                    "requestStatusPerDestination": [
                        self._per_destination(diagnostic, d, done) for d in diagnostic.destinations
                    ]
                }
            )

    def _per_destination(
        self, diagnostic: Diagnostic, destination: dict[str, Any], done: bool
    ) -> dict[str, Any]:
        records = str(diagnostic.records)
        entry: dict[str, Any] = {"destination": destination}
        if not done:
            entry["requestStatus"] = "PROCESSING"
        elif self.error_counts:
            entry["requestStatus"] = "PARTIAL_SUCCESS"
            entry["errorInfo"] = {
                "errorCounts": [
                    {"recordCount": str(n), "reason": reason}
                    for reason, n in sorted(self.error_counts.items())
                ]
            }
        else:
            entry["requestStatus"] = "SUCCESS"
        if diagnostic.kind == "events":
            entry["eventsIngestionStatus"] = {"recordCount": records}
        elif diagnostic.kind == "removeAll":
            entry["removeAllAudienceMembersStatus"] = {}
        elif diagnostic.kind == "remove":
            entry["audienceMembersRemovalStatus"] = {
                "userDataRemovalStatus": {
                    "recordCount": records,
                    "userIdentifierCount": str(diagnostic.identifiers),
                }
            }
        else:
            status: dict[str, Any] = {
                "recordCount": records,
                "userIdentifierCount": str(diagnostic.identifiers),
            }
            if done:
                status["uploadMatchRateRange"] = self.match_rate
            entry["audienceMembersIngestionStatus"] = {"userDataIngestionStatus": status}
        return entry

    def _check_account(self, account_type: str, account: str) -> None:
        if account_type != "GOOGLE_ADS" or account != self.account_id:
            raise RpcError(
                403, "The caller does not have access to this account.", reason="PERMISSION_DENIED"
            )

    async def _list_user_lists(self, account_type: str, account: str, request: Request) -> Response:
        """GET …/userLists: pageSize (50 default, ≤ 1000) and pageToken."""
        self._authorize(request, "UserListRequests")
        self._check_account(account_type, account)
        raw_size = request.query_params.get("pageSize", str(PAGE_SIZE))
        if not raw_size.isdigit():
            raise invalid("pageSize must be a number", "INVALID_ARGUMENT", "page_size")
        size = min(int(raw_size) or PAGE_SIZE, MAX_PAGE_SIZE)
        token = request.query_params.get("pageToken", "")
        start = int(base64.urlsafe_b64decode(token).decode()) if token else 0
        with self._lock:
            every = [ul.render() for ul in self._lists.values()]
        page = every[start : start + size]
        body: dict[str, Any] = {"userLists": page}
        if start + size < len(every):
            body["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return JSONResponse(body)

    async def _get_user_list(
        self, account_type: str, account: str, list_id: str, request: Request
    ) -> Response:
        """GET …/userLists/{id}: one list, NOT_FOUND when there is none."""
        self._authorize(request, "UserListRequests")
        self._check_account(account_type, account)
        with self._lock:
            user_list = self._lists.get(list_id)
            if user_list is None:
                raise RpcError(404, "Requested entity was not found.", reason="NOT_FOUND")
            return JSONResponse(user_list.render())

    async def _create_user_list(
        self, account_type: str, account: str, request: Request
    ) -> Response:
        """POST …/userLists: a display name not used yet, a duration of whole days."""
        self._authorize(request, "UserListRequests")
        self._check_account(account_type, account)
        body = await self._body(request)
        name = body.get("displayName")
        if not isinstance(name, str) or not name.strip():
            raise invalid("displayName is required", "REQUIRED_FIELD_MISSING", "display_name")
        duration = body.get("membershipDuration")
        if duration is not None:
            _check_duration(duration)
        info = body.get("ingestedUserListInfo")
        keys = info.get("uploadKeyTypes") if isinstance(info, dict) else None
        if not isinstance(keys, list) or not keys:
            raise invalid(
                "ingestedUserListInfo.uploadKeyTypes is required",
                "REQUIRED_FIELD_MISSING",
                "ingested_user_list_info.upload_key_types",
            )
        with self._lock:
            if any(ul.display_name == name for ul in self._lists.values()):
                raise invalid(
                    "A user list with this name already exists",
                    "DISPLAY_NAME_ALREADY_USED",
                    "display_name",
                )
            created = self._create(name, str(body.get("description", "")), body)
        return JSONResponse(created.render())

    def _create(self, name: str, description: str, body: dict[str, Any]) -> UserList:
        list_id = str(next(self._ids))
        user_list = UserList(list_id, name, description, self.account_id, dict(body))
        self._lists[list_id] = user_list
        return user_list

    async def _unknown(self, rest: str, request: Request) -> Response:
        raise RpcError(404, f"The requested URL /{rest} was not found on this server.")


def _check_duration(raw: Any) -> None:
    """`membershipDuration`: whole days in seconds (`7776000s`), at most 540 days."""
    text = str(raw)
    seconds = text[:-1] if text.endswith("s") else ""
    if not seconds.isdigit() or int(seconds) % 86_400:
        raise invalid(
            "membershipDuration must be whole days", "INVALID_ARGUMENT", "membership_duration"
        )
    if int(seconds) > MAX_DURATION_DAYS * 86_400:
        raise invalid(
            "membershipDuration is too long",
            "MEMBERSHIP_DURATION_TOO_LONG",
            "membership_duration",
        )


def _jwt_claims(assertion: str) -> dict[str, Any]:
    """The claims of a JWT (its signature is not checked: the fake has no key registry)."""
    parts = assertion.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = orjson.loads(payload)
    except (ValueError, orjson.JSONDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


async def _rpc_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RpcError):
        raise exc
    return exc.response()
