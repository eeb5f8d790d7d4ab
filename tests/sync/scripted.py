"""A scripted destination for sync tests: a remote list whose answers the test dictates.

It stands for any external system (the sync layer cannot tell): it keeps what it was sent,
applies each batch id once, and answers from a per-attempt script (`ok`, `429`, `500`,
`timeout`, `401`, `400`, or a per-record rejection), like rudder-server's scripted destination.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from cohortsync.destinations.base import (
    AuthError,
    Batch,
    BatchResult,
    Capabilities,
    ConversionBatch,
    Destination,
    DestinationConfig,
    PermanentError,
    TransientError,
)


@dataclass
class Remote:
    """The remote system's state and the script of its next answers."""

    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    attempts: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    conversions: dict[str, dict[str, Any]] = field(default_factory=dict)
    script: list[str] = field(default_factory=list)
    retry_after: float | None = None
    reject: dict[str, str] = field(default_factory=dict)
    """profile_id → reason: records refused one by one."""
    flaky: set[str] = field(default_factory=set)
    """profile_ids whose record fails transiently once (then succeeds)."""

    def answer(self) -> str:
        return self.script.pop(0) if self.script else "ok"


REMOTES: dict[str, Remote] = {}


class ScriptedConfig(DestinationConfig):
    remote: str


class ScriptedAds(Destination):
    """An ad-platform-like list: no holdout members, matches on email or phone."""

    kind: ClassVar[str] = "scripted_ads"
    config_model = ScriptedConfig
    capabilities = Capabilities(
        identifiers=("email", "phone"), conversions=True, max_batch=3, ad_platform=True
    )

    @property
    def remote(self) -> Remote:
        assert isinstance(self.config, ScriptedConfig)
        return REMOTES.setdefault(self.config.remote, Remote())

    def _outcome(self, batch_id: str, ids: tuple[int, ...]) -> None:
        self.remote.attempts.append((batch_id, ids))
        answer = self.remote.answer()
        if answer in ("429", "500", "timeout"):
            raise TransientError(f"scripted {answer}", self.remote.retry_after)
        if answer == "401":
            raise AuthError("scripted 401: token expired")
        if answer == "400":
            raise PermanentError("scripted 400: invalid parameter")

    def apply(self, batch: Batch) -> BatchResult:
        self._outcome(batch.batch_id, tuple(c.change_id for c in batch.changes))
        rejected = {
            c.change_id: self.remote.reject[c.profile_id]
            for c in batch.changes
            if c.profile_id in self.remote.reject
        }
        retry = {
            c.change_id: "scripted: try this record again"
            for c in batch.changes
            if c.profile_id in self.remote.flaky
        }
        self.remote.flaky -= {c.profile_id for c in batch.changes}
        if batch.batch_id in self.remote.applied:
            return BatchResult(rejected=rejected, retry=retry)
        self.remote.applied.append(batch.batch_id)
        for change in batch.changes:
            if change.change_id in rejected or change.change_id in retry:
                continue
            self.remote.calls.append((change.op, batch.audience, change.profile_id))
            key = f"{batch.audience}/{change.profile_id}"
            if change.op == "add":
                self.remote.members[key] = {
                    "holdout": change.holdout,
                    "identifiers": dict(change.identifiers),
                }
            else:
                self.remote.members.pop(key, None)
        return BatchResult(
            rejected=rejected, retry=retry, stats={"num_received": len(batch.changes)}
        )

    def send_conversions(self, batch: ConversionBatch) -> BatchResult:
        self._outcome(batch.batch_id, tuple(c.conversion_id for c in batch.conversions))
        for c in batch.conversions:
            self.remote.conversions.setdefault(
                c.message_id, {"name": c.name, "value": c.value, "currency": c.currency}
            )
        return BatchResult()

    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        if isinstance(batch, Batch):
            return [{"op": c.op, "profile": c.profile_id} for c in batch.changes]
        return [{"conversion": c.message_id} for c in batch.conversions]


class ScriptedWarehouse(ScriptedAds):
    """A warehouse-like table: holdout members included, flagged; any identifier."""

    kind: ClassVar[str] = "scripted_warehouse"
    capabilities = Capabilities(
        identifiers=("user_id", "email", "phone", "anonymous_id"), conversions=True
    )
