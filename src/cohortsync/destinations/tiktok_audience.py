"""TikTok audiences: audience changes as Segment API member mappings of one advertiser.

Each cohortsync audience maps to the TikTok audience of the same exact name, found by listing
`dmp/custom_audience/list/` or created with `segment/audience/` on first use. Members are added
and deleted with `segment/mapping/` under the schema `["EMAIL_SHA256", "PHONE_SHA256"]`, one
array per person aligned with it (`{}` where an identifier is missing): email and phone
SHA-256-hashed after TikTok's normalisation (phone as digits with country code, no `+`,
destinations.md §5 and §9). Runs of consecutive adds or deletes keep the batch's order, at
most 1,000 people per request; bodies derive from the batch alone, so a resend sends the same
bytes (and adding or deleting a member twice changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import field_validator

from cohortsync.destinations.base import (
    ADD,
    Batch,
    BatchResult,
    Capabilities,
    ConversionBatch,
    Destination,
    DestinationConfig,
    DestinationContext,
    DryRun,
    Op,
    PermanentError,
    RateLimit,
)
from cohortsync.destinations.hashing import hash_identifier
from cohortsync.destinations.http import PreparedRequest, json_body
from cohortsync.destinations.tiktok_api import TiktokConfig, tiktok_send

SCHEMA = ("EMAIL_SHA256", "PHONE_SHA256")
MAX_USERS = 1_000
"""People per `segment/mapping/` call (TikTok does not publish one; partners keep 1,000)."""
PAGE_SIZE = 100
MAX_PAGES = 1_000
NO_IDENTIFIER = "no identifier TikTok accepts (email, phone)"
HOLDOUT = "holdout member: ad platforms never receive the control group"
MINIMUM = 1_000
"""TikTok targets a customer audience only once it holds about 1,000 people."""


class TiktokAudienceConfig(TiktokConfig):
    """`type: tiktok_audience`: the advertiser account and its token."""

    type: Literal["tiktok_audience"] = "tiktok_audience"
    advertiser_id: str
    """The advertiser account number (`7012345678901234567`)."""

    @field_validator("advertiser_id")
    @classmethod
    def _advertiser(cls, value: str) -> str:
        number = value.strip()
        if not number.isdigit():
            raise ValueError(
                "advertiser_id must be the advertiser number, like 7012345678901234567"
            )
        return number

    def usable_minimum(self) -> int | None:
        """TikTok's minimum audience size for targeting."""
        return MINIMUM


@dataclass(frozen=True)
class Mapping:
    """One `segment/mapping/` request: add or delete, and the people's hashed ids."""

    op: Op
    rows: tuple[tuple[str, str], ...]


class TiktokAudienceDestination(Destination[TiktokAudienceConfig]):
    """Keeps TikTok audiences of one advertiser equal to cohortsync's audiences."""

    kind: ClassVar[str] = "tiktok_audience"
    config_model: ClassVar[type[DestinationConfig]] = TiktokAudienceConfig
    capabilities = Capabilities(
        identifiers=("email", "phone"),
        max_batch=MAX_USERS,
        rate_limit=RateLimit(),  # TikTok publishes no figure: codes 40100/40132 say when
        ad_platform=True,
        hashed=True,
        no_replace=(
            "TikTok's Segment API (segment/mapping), which this destination uses, documents no "
            "replace, no delete-all and no member count; only the Customer File API replaces "
            "a list (custom_audience/update with action REPLACE, from uploaded files, refused "
            "below 1,000 members), and cohortsync does not upload customer files"
        ),
    )

    def __init__(self, config: DestinationConfig, context: DestinationContext) -> None:
        super().__init__(config, context)
        self._ids: dict[str, str] = {}

    def apply(self, batch: Batch) -> BatchResult:
        """Send the batch's adds and deletes; records without identifiers are rejected."""
        mappings, rejected = self.plan(batch)
        if not mappings:
            return BatchResult(rejected=rejected, stats={"sent": 0, "requests": 0})
        audience_id = self.audience_id(batch.audience)
        for index, mapping in enumerate(mappings, start=1):
            what = (
                f"tiktok_audience {self.context.name}: {mapping.op} to {batch.audience} "
                f"({index}/{len(mappings)})"
            )
            tiktok_send(self.context.http, self.request(audience_id, mapping), what)
        stats = {"sent": sum(len(m.rows) for m in mappings), "requests": len(mappings)}
        return BatchResult(rejected=rejected, stats=stats)

    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        """The `segment/mapping/` requests `apply` would send, the token redacted; an audience
        id not yet known reads `<id of NAME>`."""
        return self.preview(batch).requests

    def preview(self, batch: Batch | ConversionBatch) -> DryRun:
        """The requests and the changes refused before sending, with the reasons."""
        if not isinstance(batch, Batch):
            raise PermanentError("tiktok_audience receives audience changes, not conversions")
        mappings, rejected = self.plan(batch)
        audience_id = self._ids.get(batch.audience, f"<id of {batch.audience}>")
        requests = [self.request(audience_id, mapping).describe() for mapping in mappings]
        return DryRun(requests, rejected)

    def plan(self, batch: Batch) -> tuple[list[Mapping], dict[int, str]]:
        """The requests for a batch, in order, and the records rejected before sending."""
        rejected: dict[int, str] = {}
        runs: list[tuple[Op, list[tuple[str, str]]]] = []
        for change in batch.changes:
            if change.holdout and change.op == ADD:
                rejected[change.change_id] = HOLDOUT
                continue
            ids = change.identifiers
            email = hash_identifier("email", ids.get("email") or "", "tiktok") or ""
            phone = hash_identifier("phone", ids.get("phone") or "", "tiktok") or ""
            if not (email or phone):
                rejected[change.change_id] = NO_IDENTIFIER
                continue
            if not runs or runs[-1][0] != change.op:
                runs.append((change.op, []))
            runs[-1][1].append((email, phone))
        mappings = [
            Mapping(op, tuple(rows[start : start + MAX_USERS]))
            for op, rows in runs
            for start in range(0, len(rows), MAX_USERS)
        ]
        return mappings, rejected

    def request(self, audience_id: str, mapping: Mapping) -> PreparedRequest:
        """The exact `segment/mapping/` request: the same bytes on every attempt."""
        body = {
            "advertiser_ids": [self.settings.advertiser_id],
            "action": "add" if mapping.op == ADD else "delete",
            "id_schema": list(SCHEMA),
            "batch_data": [
                [{"id": value, "audience_ids": [audience_id]} if value else {} for value in row]
                for row in mapping.rows
            ],
        }
        return PreparedRequest(
            "POST",
            self.settings.url("segment/mapping/"),
            {},
            self.settings.headers(),
            json_body(body),
        )

    def audience_id(self, name: str) -> str:
        """The id of the audience named exactly `name`, created if missing."""
        cached = self._ids.get(name)
        if cached is not None:
            return cached
        found = self._find(name) or self._create(name)
        self._ids[name] = found
        return found

    def _find(self, name: str) -> str | None:
        """The audience named exactly `name`; the lowest id wins if a name repeats."""
        what = f"tiktok_audience {self.context.name}: look up audience {name}"
        matches: list[str] = []
        for page in range(1, MAX_PAGES + 1):
            params = {
                "advertiser_id": self.settings.advertiser_id,
                "page": str(page),
                "page_size": str(PAGE_SIZE),
            }
            listing = PreparedRequest(
                "GET",
                self.settings.url("dmp/custom_audience/list/"),
                params,
                self.settings.headers(),
            )
            data = tiktok_send(self.context.http, listing, what)
            if not isinstance(data, dict):
                break
            for item in data.get("list") or ():
                if isinstance(item, dict) and item.get("name") == name:
                    matches.append(str(item.get("audience_id")))
            info = data.get("page_info")
            total = info.get("total_page") if isinstance(info, dict) else None
            if not isinstance(total, int) or page >= total:
                break
        return min(matches, key=lambda i: (len(i), i)) if matches else None

    def _create(self, name: str) -> str:
        """Create the audience and return its id."""
        what = f"tiktok_audience {self.context.name}: create audience {name}"
        body = {
            "advertiser_id": self.settings.advertiser_id,
            "custom_audience_name": name,
            "action": "create",
        }
        creation = PreparedRequest(
            "POST",
            self.settings.url("segment/audience/"),
            {},
            self.settings.headers(),
            json_body(body),
        )
        data = tiktok_send(self.context.http, creation, what)
        audience_id = data.get("audience_id") if isinstance(data, dict) else None
        if not audience_id:
            raise PermanentError(f"{what}: TikTok answered without an audience id")
        return str(audience_id)
