"""Store a batch of validated messages: dedupe, resolve identities, commit once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cohortsync.config.models import IdentityConfig
from cohortsync.identity.graph import IdentityGraph, identifier_keys, priority_order
from cohortsync.store.base import ResolvedBatch, Store
from cohortsync.store.records import Message, Rejection


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

    Resolution is idempotent, so a message already stored resolves to what it did before;
    only the event insert decides what is new.
    """
    unique = list({m.message_id: m for m in reversed(messages)}.values())[::-1]
    if len(unique) > 1:
        unique.sort(key=lambda m: m.timestamp_us)
    keys = [key for m in unique for key in identifier_keys(m, identity)]
    limited = [k for k in priority_order(identity) if identity.limit_for(k) is not None]
    owners, profiles = store.load_identity_state(keys, limited)
    graph = IdentityGraph(identity, owners, profiles)
    profile_ids = [graph.resolve(m) for m in unique]
    batch = ResolvedBatch(unique, profile_ids, graph.changes, graph.profiles)
    stored = store.commit_batch(batch, rejections)
    return IngestResult(
        received=len(messages) + len(rejections),
        stored=stored,
        duplicates=len(messages) - stored,
        quarantined=len(rejections),
    )
