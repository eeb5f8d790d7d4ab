"""Acme Lists: a made-up ad platform's list API, kept in sync the way a plug-in would do it.

`POST {url}/v1/lists/{audience}/members` with `{"op": "add" | "remove", "members": [{"email_sha256",
"external_id"}]}`, at most 100 members a request, `Authorization: Bearer <token>` and an
`Idempotency-Key` Acme answers a repeat of from memory. A 200 lists members it refused as
`{"errors": [{"index", "reason"}]}`. Registered as the entry point
`acme_lists = "tests.destinations.thirdparty.acme_lists:AcmeListsDestination"`.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal

import orjson
from pydantic import SecretStr

from cohortsync.destinations.base import (
    ADD,
    Batch,
    BatchResult,
    Capabilities,
    Change,
    ConversionBatch,
    Destination,
    DestinationConfig,
    Op,
    PermanentError,
    RateLimit,
)
from cohortsync.destinations.http import PreparedRequest, json_body, send

MAX_MEMBERS = 100


class AcmeListsConfig(DestinationConfig):
    """`type: acme_lists`: the API address and its token."""

    type: Literal["acme_lists"] = "acme_lists"
    url: str
    token: SecretStr


class AcmeListsDestination(Destination[AcmeListsConfig]):
    """Adds and removes hashed members of one Acme list per audience."""

    kind: ClassVar[str] = "acme_lists"
    config_model: ClassVar[type[DestinationConfig]] = AcmeListsConfig
    capabilities = Capabilities(
        identifiers=("email", "user_id"),
        max_batch=1_000,
        rate_limit=RateLimit(per_second=10),
        ad_platform=True,
        hashed=True,
    )

    def apply(self, batch: Batch) -> BatchResult:
        """Send the batch as requests of ≤ 100 members; report each refused member."""
        requests, rows, rejected = self._plan(batch)
        for request, ids in zip(requests, rows, strict=True):
            answer = send(self.context.http, request, f"acme_lists {self.context.name}")
            for error in orjson.loads(answer.content or b"{}").get("errors", []):
                rejected[ids[error["index"]]] = f"refused by Acme: {error['reason']}"
        return BatchResult(rejected=rejected, stats={"requests": len(requests)})

    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        """The requests `apply` would send, the token redacted."""
        if not isinstance(batch, Batch):
            return []
        return [request.describe() for request in self._plan(batch)[0]]

    def _plan(self, batch: Batch) -> tuple[list[PreparedRequest], list[list[int]], dict[int, str]]:
        """Requests in batch order (one op each), the change ids of their members, and the
        changes refused before sending."""
        runs: list[tuple[Op, list[tuple[int, dict[str, str]]]]] = []
        rejected: dict[int, str] = {}
        for change in batch.changes:
            member = _member(change)
            if change.holdout and change.op == ADD:
                rejected[change.change_id] = "holdout member: ad platforms never get it"
            elif member is None:
                rejected[change.change_id] = "no email or user_id for Acme"
            else:
                if not runs or runs[-1][0] != change.op:
                    runs.append((change.op, []))
                runs[-1][1].append((change.change_id, member))
        requests, ids = [], []
        for op, members in runs:
            for start in range(0, len(members), MAX_MEMBERS):
                chunk = members[start : start + MAX_MEMBERS]
                requests.append(self._request(batch, op, [m for _, m in chunk], len(requests)))
                ids.append([change_id for change_id, _ in chunk])
        return requests, ids, rejected

    def _request(
        self, batch: Batch, op: Op, members: list[dict[str, str]], index: int
    ) -> PreparedRequest:
        if not batch.audience.replace("_", "").isalnum():
            raise PermanentError(f"audience name {batch.audience!r} cannot name an Acme list")
        headers = {
            "Authorization": f"Bearer {self.settings.token.get_secret_value()}",
            "Content-Type": "application/json",
            "Idempotency-Key": f"{batch.batch_id}/{index}",
        }
        url = f"{self.settings.url.rstrip('/')}/v1/lists/{batch.audience}/members"
        body = json_body({"op": op, "members": members})
        return PreparedRequest("POST", url, headers=headers, content=body)


def _member(change: Change) -> dict[str, str] | None:
    """The member row: the email SHA-256-hashed (trimmed, lower-cased), the user id as is."""
    email = (change.identifiers.get("email") or "").strip().lower()
    user_id = change.identifiers.get("user_id") or ""
    if not (email or user_id):
        return None
    hashed = hashlib.sha256(email.encode()).hexdigest() if email else ""
    return {"email_sha256": hashed, "external_id": user_id}
