"""Store a batch of validated messages: dedupe, resolve identities, commit once."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cohortsync.config.models import IdentityConfig
from cohortsync.identity.graph import (
    IdentityGraph,
    extract_identifiers,
    limited_kinds,
    preload_keys,
    trait_identifier_kinds,
)
from cohortsync.store.base import (
    STALE_RETRIES,
    AlreadyStoredError,
    ResolvedBatch,
    StaleIdentityError,
    Store,
    final_targets,
)
from cohortsync.store.records import IdentityChanges, Key, Message, Rejection


@dataclass(frozen=True)
class IngestResult:
    """What one batch did: every received message is stored, a duplicate, or quarantined."""

    received: int
    stored: int
    duplicates: int
    quarantined: int
    profiles: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    """Per stored message id (when asked for), the profiles holding any of its identifiers
    once the batch was resolved, merges followed: what real-time evaluation looks at."""
    merged: frozenset[str] = field(default_factory=frozenset, compare=False)
    """Survivors of the merges the stored messages made (when asked for): evaluated in real
    time whatever message made them, since each history now holds the merged profile's."""

    def counts(self) -> dict[str, int]:
        """What the batch did, as `ingest --json` reports it."""
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
        }

    def __add__(self, other: IngestResult) -> IngestResult:
        return IngestResult(
            self.received + other.received,
            self.stored + other.stored,
            self.duplicates + other.duplicates,
            self.quarantined + other.quarantined,
            {**self.profiles, **other.profiles},
            self.merged | other.merged,
        )


EMPTY_RESULT = IngestResult(0, 0, 0, 0)
Commit = Callable[[Sequence[Message], Sequence[Rejection]], IngestResult]


def store_messages(
    store: Store,
    identity: IdentityConfig,
    messages: Sequence[Message],
    rejections: Sequence[Rejection] = (),
    *,
    with_profiles: bool = False,
) -> IngestResult:
    """Resolve and durably store `messages` and quarantine `rejections`, in one transaction.

    Messages already stored are left out (found by the insert itself, which is cheap through
    the primary key; the batch is then resolved again without them). A batch resolved against
    identities another writer changed meanwhile is resolved again, too. `with_profiles`: the
    result says which profiles each stored message touched (`IngestResult.profiles`).
    """
    unique = list({m.message_id: m for m in reversed(messages)}.values())[::-1]
    unique.sort(key=lambda m: m.timestamp_us)
    stale = 0
    while True:
        try:
            batch, graph, keyed = _resolve(identity, store, unique)
            stored = store.commit_batch(batch, rejections)
            break
        except AlreadyStoredError as exc:
            unique = [m for m in unique if m.message_id not in exc.message_ids]
        except StaleIdentityError:
            stale += 1
            if stale > STALE_RETRIES:
                raise
    profiles, merged = _touched(batch, graph, keyed) if with_profiles else ({}, frozenset())
    return IngestResult(
        received=len(messages) + len(rejections),
        stored=stored,
        duplicates=len(messages) - stored,
        quarantined=len(rejections),
        profiles=profiles,
        merged=merged,
    )


def _touched(
    batch: ResolvedBatch, graph: IdentityGraph, keyed: Sequence[list[Key]]
) -> tuple[dict[str, tuple[str, ...]], frozenset[str]]:
    """`IngestResult.profiles` and `.merged`: per message, the profile it was stored under and
    those holding its identifiers (an identify's email may belong to another profile; an
    alias's previous id too), each followed to its survivor of the batch's merges; and those
    survivors."""
    final = final_targets(batch)
    owners = graph.owners
    touched: dict[str, tuple[str, ...]] = {}
    for message, profile_id, keys in zip(batch.messages, batch.profile_ids, keyed, strict=True):
        found = {profile_id, *(owners[k] for k in keys if k in owners)}
        if message.previous_id is not None:
            for kind in ("user_id", "anonymous_id"):
                owner = owners.get((kind, message.previous_id))
                if owner is not None:
                    found.add(owner)
        touched[message.message_id] = tuple({final.get(p, p) for p in found})
    return touched, frozenset(final.values())


def _resolve(
    identity: IdentityConfig, store: Store, messages: list[Message]
) -> tuple[ResolvedBatch, IdentityGraph, list[list[Key]]]:
    changes = IdentityChanges()
    kinds = trait_identifier_kinds(identity)
    keyed = [extract_identifiers(m, identity, changes, kinds) for m in messages]
    wanted = {k for m, keys in zip(messages, keyed, strict=True) for k in preload_keys(m, keys)}
    owners, profiles = store.load_identity_state(wanted, limited_kinds(identity))
    graph = IdentityGraph(identity, owners, profiles, changes)
    profile_ids = graph.resolve_all(messages, keyed)
    return ResolvedBatch(messages, profile_ids, graph.changes, graph.profiles), graph, keyed


class PipelinedWriter:
    """Commits full batches on a writer thread while the caller parses the next one.

    DuckDB releases the GIL, so storing batch N overlaps with validating batch N+1;
    at most one batch waits, so memory stays bounded.
    """

    def __init__(self, commit: Commit, batch_size: int) -> None:
        self._commit = commit
        self._batch_size = batch_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer")
        self._pending: Future[IngestResult] | None = None
        self._messages: list[Message] = []
        self._rejections: list[Rejection] = []
        self.total = EMPTY_RESULT

    def __enter__(self) -> PipelinedWriter:
        return self

    def add(self, item: Message | Rejection) -> None:
        """Queue one validated message or rejection; a full batch goes to the writer."""
        if isinstance(item, Rejection):
            self._rejections.append(item)
        else:
            self._messages.append(item)
        if len(self._messages) + len(self._rejections) >= self._batch_size:
            self._flush()

    def _flush(self) -> None:
        self._wait()
        if self._messages or self._rejections:
            batch, rejected = self._messages, self._rejections
            self._messages, self._rejections = [], []
            self._pending = self._executor.submit(self._commit, batch, rejected)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.total += pending.result()

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            if kind is None:
                self._flush()
            self._wait()
        finally:
            self._executor.shutdown(wait=True)
