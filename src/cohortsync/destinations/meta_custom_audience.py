"""Meta Custom Audiences: audience changes as customer-file uploads to one ad account.

Each cohortsync audience maps to the customer-file audience of the same exact name in the ad
account, found by listing `act_X/customaudiences` or created (`subtype=CUSTOM`) on first use.
Members are added with `POST {id}/users` and removed with `DELETE {id}/users`, as the
multi-key schema `["EXTERN_ID", "EMAIL", "PHONE"]`: email and phone SHA-256-hashed after Meta's
normalisation, `EXTERN_ID` the SHA-256 of the user id (the same value `meta_capi` sends as
`external_id`). With `hash_external_id: false` the user id goes as it is, unless it holds an
email or phone number in any form (`identity/pii.py`): such an add is refused with the reason,
such a remove sends the id hashed, so an exit is never held back and never sent raw. A batch
becomes at most 10,000 rows per request, one upload session per run of consecutive adds or
removes; session ids and bodies derive from the batch alone, so a resent batch sends identical
bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, field_validator

from cohortsync.destinations import meta_rebuild
from cohortsync.destinations.base import (
    ADD,
    AudienceSize,
    Batch,
    BatchResult,
    Capabilities,
    Change,
    ConversionBatch,
    Destination,
    DestinationConfig,
    DestinationContext,
    DryRun,
    Op,
    PermanentError,
    PlatformCount,
    RateLimit,
    ReadBack,
    Rebuild,
    RebuildResult,
)
from cohortsync.destinations.hashing import hash_identifier
from cohortsync.destinations.http import PreparedRequest, json_body
from cohortsync.destinations.meta_graph import GraphConfig, graph_send
from cohortsync.identity.pii import identifier_kinds

SCHEMA = meta_rebuild.SCHEMA
MAX_ROWS = meta_rebuild.MAX_ROWS
MAX_PAGES = 1_000
PAGE_SIZE = 100
NO_IDENTIFIER = "no identifier Meta accepts (email, phone, user_id)"
HOLDOUT = "holdout member: ad platforms never receive the control group"
MINIMUM = 100
"""Meta serves a customer-file audience only once about 100 people matched."""
SIZE_FIELDS = "approximate_count_lower_bound,approximate_count_upper_bound,operation_status"
_JSON = {"Content-Type": "application/json"}


class MetaCustomAudienceConfig(GraphConfig):
    """`type: meta_custom_audience`: the ad account, its token, and how audiences are created."""

    type: Literal["meta_custom_audience"] = "meta_custom_audience"
    ad_account_id: str
    """The ad account number, with or without its `act_` prefix."""
    customer_file_source: Literal[
        "USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"
    ] = "USER_PROVIDED_ONLY"
    hash_external_id: bool = True
    """Send `EXTERN_ID` as the SHA-256 of the user id; `false` sends ids as they are, except
    ids that hold an email or phone number (adds refused, removes hashed)."""
    read_sizes_every_seconds: float = Field(default=3600.0, gt=0)
    """How often each audience's approximate size and operation status are read back
    (`GET {audience_id}`), during a sync or serve's delivery rounds."""

    @field_validator("ad_account_id")
    @classmethod
    def _account(cls, value: str) -> str:
        number = value.strip().removeprefix("act_")
        if not number.isdigit():
            raise ValueError(
                "ad_account_id must be the ad account number, like act_1234567890 or 1234567890"
            )
        return number

    def usable_minimum(self) -> int | None:
        """Meta's minimum matched audience size."""
        return MINIMUM

    @property
    def account_path(self) -> str:
        """The ad account's Graph node, `act_<number>`."""
        return f"act_{self.ad_account_id}"


@dataclass(frozen=True)
class Upload:
    """One `/users` request: the op, its session fields and the rows it carries."""

    op: Op
    session_id: int
    batch_seq: int
    last: bool
    total: int
    rows: tuple[tuple[str, str, str], ...]


class MetaCustomAudienceDestination(Destination[MetaCustomAudienceConfig]):
    """Keeps customer-file Custom Audiences in one ad account equal to cohortsync's audiences."""

    kind: ClassVar[str] = "meta_custom_audience"
    config_model: ClassVar[type[DestinationConfig]] = MetaCustomAudienceConfig
    capabilities = Capabilities(
        identifiers=("email", "phone", "user_id"),
        max_batch=MAX_ROWS,
        rate_limit=RateLimit(),  # business-use-case limits, per ad account: Graph says when
        ad_platform=True,
        hashed=True,
        reads_back=True,
        replace=True,
    )

    def __init__(self, config: DestinationConfig, context: DestinationContext) -> None:
        super().__init__(config, context)
        self._ids: dict[str, str] = {}

    def apply(self, batch: Batch) -> BatchResult:
        """Upload the batch's adds and removes; records without identifiers are rejected."""
        uploads, rejected = self.plan(batch)
        if not uploads:
            return BatchResult(rejected=rejected, stats={"sent": 0, "requests": 0})
        audience_id = self.audience_id(batch.audience)
        received: dict[int, int] = {}
        invalid: dict[int, int] = {}
        for upload in uploads:
            what = f"meta_custom_audience {self.context.name}: {upload.op} to {batch.audience}"
            answer = graph_send(
                self.context.http, self.request(audience_id, upload), what, self.context.clock()
            )
            if isinstance(answer, dict):
                received[upload.session_id] = _count(answer, "num_received")
                invalid[upload.session_id] = _count(answer, "num_invalid_entries")
        stats = {
            "sent": sum(len(u.rows) for u in uploads),
            "requests": len(uploads),
            "num_received": sum(received.values()),
            "num_invalid_entries": sum(invalid.values()),
        }
        return BatchResult(rejected=rejected, stats=stats)

    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        """The `/users` requests `apply` would send, secrets redacted; an audience id not yet
        known reads `<id of NAME>` (apply looks it up by name, or creates it, first)."""
        return self.preview(batch).requests

    def preview(self, batch: Batch | ConversionBatch) -> DryRun:
        """The `/users` requests and the changes refused before sending, with the reasons."""
        if not isinstance(batch, Batch):
            raise PermanentError("meta_custom_audience receives audience changes, not conversions")
        uploads, rejected = self.plan(batch)
        audience_id = self._ids.get(batch.audience, f"<id of {batch.audience}>")
        requests = [self.request(audience_id, upload).describe() for upload in uploads]
        return DryRun(requests, rejected)

    def plan(self, batch: Batch) -> tuple[list[Upload], dict[int, str]]:
        """The uploads for a batch, in order, and the records rejected before sending.

        Runs of consecutive adds or removes keep the batch's order (a profile removed then
        re-added ends up a member); each run is one upload session of ≤ 10,000-row requests.
        """
        rejected: dict[int, str] = {}
        runs: list[tuple[Op, list[tuple[str, str, str]]]] = []
        for change in batch.changes:
            if change.holdout and change.op == ADD:
                rejected[change.change_id] = HOLDOUT
                continue
            refusal = self.refusal(change)
            if refusal:
                rejected[change.change_id] = refusal
                continue
            row = self.row(change)
            if row is None:
                rejected[change.change_id] = NO_IDENTIFIER
                continue
            if not runs or runs[-1][0] != change.op:
                runs.append((change.op, []))
            runs[-1][1].append(row)
        uploads: list[Upload] = []
        for index, (op, rows) in enumerate(runs):
            session = session_id(batch.batch_id, index)
            chunks = [rows[i : i + MAX_ROWS] for i in range(0, len(rows), MAX_ROWS)]
            for seq, chunk in enumerate(chunks, start=1):
                uploads.append(
                    Upload(op, session, seq, seq == len(chunks), len(rows), tuple(chunk))
                )
        return uploads, rejected

    def refusal(self, change: Change) -> str:
        """Why an add cannot go out as configured ("" if it can): with `hash_external_id: false`,
        a user id holding an email or phone would leave raw. Names the kind, never the value."""
        user_id = (change.identifiers.get("user_id") or "").strip()
        if self.settings.hash_external_id or change.op != ADD or not user_id:
            return ""
        kinds = identifier_kinds(user_id)
        if not kinds:
            return ""
        what = " and ".join(sorted(kinds)).replace("phone", "phone number")
        return (
            f"user_id looks like {_article(what)} {what}: refusing to send it unhashed as "
            "EXTERN_ID; remove hash_external_id: false from the destination"
        )

    def row(self, change: Change) -> tuple[str, str, str] | None:
        """The `EXTERN_ID, EMAIL, PHONE` row of a change (`""` where unknown), or None if empty."""
        ids = change.identifiers
        email = hash_identifier("email", ids.get("email") or "", "meta") or ""
        phone = hash_identifier("phone", ids.get("phone") or "", "meta") or ""
        extern = self._extern_id(ids.get("user_id") or "")
        if not (email or phone or extern):
            return None
        return (extern, email, phone)

    def _extern_id(self, user_id: str) -> str:
        """The user id as sent: hashed, unless `hash_external_id: false` and it holds no email
        or phone number."""
        value = user_id.strip()
        if not value:
            return ""
        if self.settings.hash_external_id or identifier_kinds(value):
            return hash_identifier("external_id", value, "meta") or ""
        return value

    def request(self, audience_id: str, upload: Upload) -> PreparedRequest:
        """The exact `/users` request for one upload: the same bytes on every attempt."""
        body = {
            "payload": {"schema": list(SCHEMA), "is_raw": True, "data": list(upload.rows)},
            "session": {
                "session_id": upload.session_id,
                "batch_seq": upload.batch_seq,
                "last_batch_flag": upload.last,
                "estimated_num_total": upload.total,
            },
        }
        return PreparedRequest(
            method="POST" if upload.op == ADD else "DELETE",
            url=self.settings.url(f"{audience_id}/users"),
            params=self.settings.auth_params(),
            headers=_JSON,
            content=json_body(body),
        )

    def audience_id(self, name: str) -> str:
        """The id of the customer-file audience named exactly `name`, created if missing."""
        cached = self._ids.get(name)
        if cached is not None:
            return cached
        found = self._find(name)
        if found is None:
            found = self._create(name)
        self._ids[name] = found
        return found

    def _find(self, name: str) -> str | None:
        """The audience named exactly `name`; the lowest id wins if a name repeats."""
        what = f"meta_custom_audience {self.context.name}: look up audience {name}"
        listing = self._listing("id,name", what)
        matches = [str(a.get("id")) for a in listing if a.get("name") == name]
        return min(matches, key=_id_order) if matches else None

    def _listing(self, fields: str, what: str) -> list[dict[str, Any]]:
        """Every audience of the ad account with `fields`, read page by page."""
        found: list[dict[str, Any]] = []
        after: str | None = None
        for _ in range(MAX_PAGES):
            params = {"fields": fields, "limit": str(PAGE_SIZE), **self.settings.auth_params()}
            if after is not None:
                params["after"] = after
            listing = PreparedRequest(
                "GET", self.settings.url(f"{self.settings.account_path}/customaudiences"), params
            )
            page = graph_send(self.context.http, listing, what, self.context.clock())
            if not isinstance(page, dict):
                break
            found.extend(a for a in page.get("data") or () if isinstance(a, dict))
            after = _next_cursor(page)
            if after is None:
                break
        return found

    def read_back(self, audiences: Sequence[str]) -> list[ReadBack]:
        """The name and description Meta shows for each audience (GET of the account's
        audiences with `id,name,description`): the one named exactly as the audience, else one
        still carrying the description cohortsync gave it (renamed on the platform)."""
        what = f"meta_custom_audience {self.context.name}: read back audiences"
        listing = self._listing("id,name,description", what)
        found = []
        for audience in audiences:
            expected = described(audience)
            named = [a for a in listing if a.get("name") == audience]
            marked = [a for a in listing if str(a.get("description") or "") == expected]
            if named:
                shown = min(named, key=lambda a: _id_order(str(a.get("id"))))
                text = str(shown.get("description") or "")
                edited = f"description edited on Meta to {_cut(text)!r}"
                drift = None if text == expected else edited
                found.append(ReadBack(audience, True, audience, text, drift))
            elif marked:
                name = str(marked[0].get("name") or "")
                drift = f"renamed on Meta to {_cut(name)!r}"
                found.append(ReadBack(audience, True, name, expected, drift))
            else:
                found.append(ReadBack(audience, False))
        return found

    def read_sizes_every(self) -> float | None:
        """`read_sizes_every_seconds`."""
        return self.settings.read_sizes_every_seconds

    def read_sizes(self, audiences: Sequence[str]) -> list[AudienceSize]:
        """Each audience's approximate size and operation status (`GET {audience_id}` with
        `approximate_count_lower_bound,approximate_count_upper_bound,operation_status`); an
        audience not on Meta yet is left out, never created."""
        if any(name not in self._ids for name in audiences):
            what = f"meta_custom_audience {self.context.name}: look up audiences"
            listing = self._listing("id,name", what)
            for name in audiences:
                ids = [str(a.get("id")) for a in listing if a.get("name") == name]
                if ids and name not in self._ids:
                    self._ids[name] = min(ids, key=_id_order)
        found = []
        for name in audiences:
            audience_id = self._ids.get(name)
            size = None if audience_id is None else self.read_size(name, audience_id)
            if size is not None:
                found.append(size)
        return found

    def read_size(self, name: str, audience_id: str) -> AudienceSize | None:
        """One audience's approximate size and operation status, as Graph answers them (None
        when the answer is not an object)."""
        what = f"meta_custom_audience {self.context.name}: read the size of {name}"
        params = {"fields": SIZE_FIELDS, **self.settings.auth_params()}
        request = PreparedRequest("GET", self.settings.url(audience_id), params)
        answer = graph_send(self.context.http, request, what, self.context.clock())
        if not isinstance(answer, dict):
            return None
        status = answer.get("operation_status")
        text = status.get("description") if isinstance(status, dict) else status
        return AudienceSize(
            name,
            _bound(answer.get("approximate_count_lower_bound")),
            _bound(answer.get("approximate_count_upper_bound")),
            None if text is None else str(text),
        )

    def existing_id(self, name: str) -> str | None:
        """The id of the audience named exactly `name`, or None (never creates one)."""
        cached = self._ids.get(name)
        if cached is None:
            cached = self._find(name)
            if cached is not None:
                self._ids[name] = cached
        return cached

    def count_members(self, audience: str) -> PlatformCount | None:
        """Meta's approximate size of the audience (`meta_rebuild.py`)."""
        return meta_rebuild.count_members(self, audience)

    def rebuild(self, rebuild: Rebuild) -> RebuildResult:
        """Replace the audience's members through one `/usersreplace` session."""
        return meta_rebuild.rebuild(self, rebuild, session_id("reconcile/" + rebuild.seed, 0))

    def _create(self, name: str) -> str:
        """Create the empty customer-file audience and return its id."""
        what = f"meta_custom_audience {self.context.name}: create audience {name}"
        body = {
            "name": name,
            "subtype": "CUSTOM",
            "description": described(name),
            "customer_file_source": self.settings.customer_file_source,
        }
        creation = PreparedRequest(
            "POST",
            self.settings.url(f"{self.settings.account_path}/customaudiences"),
            self.settings.auth_params(),
            _JSON,
            json_body(body),
        )
        answer = graph_send(self.context.http, creation, what, self.context.clock())
        audience_id = answer.get("id") if isinstance(answer, dict) else None
        if not audience_id:
            raise PermanentError(f"{what}: Meta answered without an audience id")
        return str(audience_id)


def described(name: str) -> str:
    """The description cohortsync gives the audience it creates (read back to spot drift)."""
    return f"{name}: kept in sync by cohortsync; members change on every sync."


def _id_order(audience_id: str) -> tuple[int, str]:
    """Numeric order of Graph ids held as strings."""
    return (len(audience_id), audience_id)


def _cut(text: str, most: int = 60) -> str:
    """At most `most` characters of a platform's text, for one-line messages."""
    return text if len(text) <= most else text[: most - 1] + "…"


def session_id(batch_id: str, run: int) -> int:
    """A positive int64 upload session id derived from the batch id and the run's position."""
    digest = hashlib.sha256(f"{batch_id}/{run}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF or 1


def _next_cursor(page: dict[str, Any]) -> str | None:
    """The `after` cursor of the next page, or None on the last page."""
    paging = page.get("paging")
    if not isinstance(paging, dict) or not paging.get("next"):
        return None
    cursors = paging.get("cursors")
    after = cursors.get("after") if isinstance(cursors, dict) else None
    if isinstance(after, str) and after:
        return after
    query = dict(parse_qsl(urlsplit(str(paging["next"])).query))
    return query.get("after") or None


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _count(answer: dict[str, Any], key: str) -> int:
    value = answer.get(key)
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def _bound(value: Any) -> int | None:
    """An approximate count bound as Graph gives it (a number, sometimes as a string)."""
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None
