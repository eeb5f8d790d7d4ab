"""Store a batch of validated messages: dedupe, resolve identities, commit once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cohortsync.config.models import IdentityConfig
from cohortsync.identity.graph import IdentityGraph, identifier_keys, priority_order
from cohortsync.store.base import AlreadyStoredError, ResolvedBatch, Store
from cohortsync.store.records import IdentityChanges, Message, Rejection


@dataclass(frozen=True)
class IngestResult:
    """What one batch did: every received message is stored, a duplicate, or quarantined."""

    received: int
    stored: int
    duplicates: int
    quarantined: int

    def __add__(self, other: IngestResult) -> IngestResult:
        return IngestResult(
            self.received + other.received,
            self.stored + other.stored,
            self.duplicates + other.duplicates,
            self.quarantined + other.quarantined,
        )


EMPTY_RESULT = IngestResult(0, 0, 0, 0)


def store_messages(
    store: Store,
    identity: IdentityConfig,
    messages: Sequence[Message],
    rejections: Sequence[Rejection] = (),
) -> IngestResult:
    """Resolve and durably store `messages` and quarantine `rejections`, in one transaction.

    Messages already stored are left out (found by the insert itself, which is cheap through
    the primary key; the batch is then resolved again without them).
    """
    unique = list({m.message_id: m for m in reversed(messages)}.values())[::-1]
    unique.sort(key=lambda m: m.timestamp_us)
    while True:
        try:
            stored = store.commit_batch(_resolve(identity, store, unique), rejections)
            break
        except AlreadyStoredError as exc:
            unique = [m for m in unique if m.message_id not in exc.message_ids]
    return IngestResult(
        received=len(messages) + len(rejections),
        stored=stored,
        duplicates=len(messages) - stored,
        quarantined=len(rejections),
    )


def _resolve(identity: IdentityConfig, store: Store, messages: list[Message]) -> ResolvedBatch:
    changes = IdentityChanges()
    keyed = [identifier_keys(m, identity, changes) for m in messages]
    limited = [k for k in priority_order(identity) if identity.limit_for(k) is not None]
    owners, profiles = store.load_identity_state((k for keys in keyed for k in keys), limited)
    graph = IdentityGraph(identity, owners, profiles, changes)
    profile_ids = [graph.resolve(m, keys) for m, keys in zip(messages, keyed, strict=True)]
    return ResolvedBatch(messages, profile_ids, graph.changes, graph.profiles)
