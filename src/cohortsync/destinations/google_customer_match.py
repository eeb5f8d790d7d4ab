"""Google Customer Match through the Data Manager API: audience changes as user-list members.

Each cohortsync audience maps to the Customer Match user list of the same exact name in the
operating account, found by listing `…/userLists` or created (`CONTACT_ID`, first-party) on first
use. Adds go to `audienceMembers:ingest` (with `termsOfService` and the configured consent),
removes to `audienceMembers:remove`, ≤ 10,000 members per request, each member's email and
phone SHA-256-hashed after Google's normalisation (`google_identifiers.py`) and sent as
`encoding: HEX`. One invalid member makes Google refuse the whole request: the request is split
until that member travels alone, which is then rejected with Google's reason while the others
are delivered (`google_isolate.py`). Each accepted request's `requestId` is kept so the match
rate Google reports later can be read back (`google_diagnostics.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import field_validator

from cohortsync.destinations import google_rebuild
from cohortsync.destinations.base import (
    ADD,
    Batch,
    BatchResult,
    Capabilities,
    Change,
    ConversionBatch,
    DeliveryError,
    DestinationConfig,
    DestinationContext,
    DryRun,
    Op,
    PermanentError,
    PlatformCount,
    RateLimit,
    Rebuild,
    RebuildResult,
    TransientError,
)
from cohortsync.destinations.google_auth import GoogleConfig
from cohortsync.destinations.google_destination import GoogleDestination
from cohortsync.destinations.google_identifiers import user_identifiers
from cohortsync.destinations.google_isolate import deliver
from cohortsync.destinations.google_user_lists import UserLists
from cohortsync.destinations.http import PreparedRequest

MAX_MEMBERS = 10_000
MINIMUM = 100
"""Google serves a Customer Match list only once it has about 100 members."""
NO_IDENTIFIER = "no identifier Google Customer Match accepts (email, phone)"
HOLDOUT = "holdout member: ad platforms never receive the control group"
TERMS = (
    "accept_terms_of_service is not set: Customer Match needs its terms of service accepted "
    "for the Google Ads account; set accept_terms_of_service: true once they are"
)


class GoogleCustomerMatchConfig(GoogleConfig):
    """`type: google_customer_match`: the account, credentials, terms and consent."""

    type: Literal["google_customer_match"] = "google_customer_match"
    accept_terms_of_service: bool = False
    """Sent as `termsOfService.customerMatchTermsOfServiceStatus: ACCEPTED`; adds are refused
    until it is set."""
    membership_duration_days: int | None = None
    """How long a member stays on a list cohortsync creates (Google's maximum when unset)."""

    @field_validator("membership_duration_days")
    @classmethod
    def _days(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 540:
            raise ValueError("membership_duration_days must be between 1 and 540")
        return value

    def usable_minimum(self) -> int | None:
        """Google's minimum list size for targeting."""
        return MINIMUM


@dataclass(frozen=True)
class Member:
    """One change as it is sent: its id and the member object."""

    change_id: int
    body: dict[str, Any]


class GoogleCustomerMatchDestination(GoogleDestination[GoogleCustomerMatchConfig]):
    """Keeps Customer Match user lists in one Google Ads account equal to the audiences."""

    kind: ClassVar[str] = "google_customer_match"
    config_model: ClassVar[type[DestinationConfig]] = GoogleCustomerMatchConfig
    capabilities = Capabilities(
        identifiers=("email", "phone"),
        max_batch=MAX_MEMBERS,
        rate_limit=RateLimit(per_second=5.0),
        ad_platform=True,
        hashed=True,
        replace=True,
    )

    def __init__(self, config: DestinationConfig, context: DestinationContext) -> None:
        super().__init__(config, context)
        days = self.settings.membership_duration_days
        self.lists = UserLists(self.client, self.settings, context.name, days)

    def apply(self, batch: Batch) -> BatchResult:
        """Send the batch's adds and removes; isolate and reject members Google refuses."""
        runs, rejected = self.plan(batch)
        if not runs:
            return BatchResult(rejected=rejected, stats={"sent": 0, "requests": 0})
        if any(op == ADD for op, _ in runs) and not self.settings.accept_terms_of_service:
            raise PermanentError(f"google_customer_match {self.context.name}: {TERMS}")
        list_id = self.lists.id_of(batch.audience)
        retry: dict[int, str] = {}
        requests = sent = 0
        request_ids: list[str] = []
        for index, (op, members) in enumerate(runs):
            what = f"google_customer_match {self.context.name}: {op} to {batch.audience}"
            later = [m.change_id for _, ms in runs[index:] for m in ms]
            try:
                done = deliver(members, _change_id, self._sender(op, list_id, what), MAX_MEMBERS)
            except PermanentError as refused:
                if "INVALID_USER_LIST_ID" not in str(refused):
                    raise
                self.lists.forget(batch.audience)  # deleted on the platform: made again
                raise TransientError(f"{refused}; the list is looked up again") from None
            except DeliveryError as failed:
                if not requests:
                    raise
                retry.update({i: str(failed) for i in later})
                break
            rejected.update(done.rejected)
            retry.update(done.retry)
            requests += done.requests
            sent += len(done.delivered)
            request_ids += [str(a["requestId"]) for a in done.answers if a.get("requestId")]
            if done.retry:
                reason = next(iter(done.retry.values()))
                retry.update({m.change_id: reason for _, ms in runs[index + 1 :] for m in ms})
                break
        self.remember(batch.batch_id, batch.audience, request_ids)
        stats = {"sent": sent, "requests": requests}
        return BatchResult(rejected=rejected, retry=retry, stats=stats)

    def count_members(self, audience: str) -> PlatformCount | None:
        """The list's size per network (`google_rebuild.py`)."""
        return google_rebuild.count_members(self, audience)

    def rebuild(self, rebuild: Rebuild) -> RebuildResult:
        """Empty the list with `removeAll`, then ingest every member."""
        return google_rebuild.rebuild(self, rebuild, TERMS)

    def _sender(
        self, op: Op, list_id: str, what: str
    ) -> Callable[[Sequence[Member]], dict[str, Any]]:
        def send(chunk: Sequence[Member]) -> dict[str, Any]:
            return self.client.call(self.request(op, list_id, chunk), what)

        return send

    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        """The ingest and remove requests `apply` would send (the list id, when not known yet,
        reads `<id of NAME>`), authorization left out."""
        return self.preview(batch).requests

    def preview(self, batch: Batch | ConversionBatch) -> DryRun:
        """The requests and the changes refused before sending, with the reasons; a batch with
        adds while the terms are not accepted is refused whole, as `apply` refuses it."""
        if not isinstance(batch, Batch):
            raise PermanentError("google_customer_match receives audience changes, not conversions")
        runs, rejected = self.plan(batch)
        if any(op == ADD for op, _ in runs) and not self.settings.accept_terms_of_service:
            refused = {m.change_id: TERMS for _, members in runs for m in members}
            return DryRun([], {**rejected, **refused})
        list_id = self.lists.known(batch.audience) or f"<id of {batch.audience}>"
        requests = [
            self.request(op, list_id, members[i : i + MAX_MEMBERS]).describe()
            for op, members in runs
            for i in range(0, len(members), MAX_MEMBERS)
        ]
        return DryRun(requests, rejected)

    def plan(self, batch: Batch) -> tuple[list[tuple[Op, list[Member]]], dict[int, str]]:
        """Runs of consecutive adds or removes, in batch order, and the changes refused here."""
        rejected: dict[int, str] = {}
        runs: list[tuple[Op, list[Member]]] = []
        for change in batch.changes:
            if change.holdout and change.op == ADD:
                rejected[change.change_id] = HOLDOUT
                continue
            member = self.member(change)
            if member is None:
                rejected[change.change_id] = NO_IDENTIFIER
                continue
            if not runs or runs[-1][0] != change.op:
                runs.append((change.op, []))
            runs[-1][1].append(member)
        return runs, rejected

    def member(self, change: Change) -> Member | None:
        """The `audienceMembers[]` entry of a change, or None without a usable identifier."""
        found = user_identifiers(change.identifiers, self.settings.default_region)
        if not found:
            return None
        return Member(change.change_id, {"userData": {"userIdentifiers": found}})

    def request(self, op: Op, list_id: str, members: Sequence[Member]) -> PreparedRequest:
        """The exact ingest (add) or remove request for these members."""
        body: dict[str, Any] = {
            "destinations": [self.settings.destination(list_id)],
            "audienceMembers": [m.body for m in members],
            "encoding": "HEX",
        }
        if op == ADD:
            body["termsOfService"] = {"customerMatchTermsOfServiceStatus": "ACCEPTED"}
            consent = self.settings.consent()
            if consent:
                body["consent"] = consent
            return self.client.prepare("POST", "v1/audienceMembers:ingest", body)
        return self.client.prepare("POST", "v1/audienceMembers:remove", body)


def _change_id(member: Member) -> int:
    return member.change_id
