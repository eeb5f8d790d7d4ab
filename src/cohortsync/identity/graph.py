"""The identity graph: which profile each identifier belongs to, and when two profiles merge.

Resolution follows the rule customer data platforms use (Segment Unify's, in essence): take an
event's identifiers in priority order (user_id, the primary identifier, secondary ones,
anonymous_id last); if attaching all of them to one profile would break a per-profile limit
(two user_ids on a shared device), drop the lowest-priority identifier and try again. The event
belongs to the profile of its highest-priority identifier. Traits are last-write-wins by event time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from cohortsync.config.models import IdentityConfig
from cohortsync.identity.normalize import IdentifierError, normalize_identifier
from cohortsync.store.records import (
    IdentifierRejection,
    IdentityChanges,
    Key,
    Merge,
    Message,
    ProfileState,
)


class IdentityGraph:
    """Resolves messages to profiles over the state the store loaded for one batch."""

    def __init__(
        self,
        config: IdentityConfig,
        owners: dict[Key, str],
        profiles: dict[str, ProfileState],
        changes: IdentityChanges | None = None,
    ) -> None:
        self.config = config
        self.owners = owners
        self.profiles = profiles
        self.changes = changes or IdentityChanges()
        self._reverse: dict[str, set[Key]] | None = None
        self._rank = {kind: i for i, kind in enumerate(priority_order(config))}
        self.limited_kinds = set(limited_kinds(config))

    def resolve(self, message: Message, keys: list[Key] | None = None) -> str:
        """Attach the message's identifiers, merging profiles where allowed; return its profile.

        `keys` are the message's identifiers when the caller already extracted them.
        """
        if keys is None:
            keys = extract_identifiers(message, self.config, self.changes)
        if message.previous_id is not None:
            # An alias's previous id is a user_id if one is known, else an anonymous id.
            kind = "user_id" if ("user_id", message.previous_id) in self.owners else "anonymous_id"
            keys = [*keys, (kind, message.previous_id)]
        target = self._known(keys)
        if target is None:
            target = self._attach_with_limits(self._dedupe_keys(keys), message)
        self._apply_traits(target, message)
        return target

    def resolve_all(self, messages: Sequence[Message], keyed: Sequence[list[Key]]) -> list[str]:
        """Resolve a batch in order. Messages that carry no traits and no alias resolve once
        per distinct identifier list: the answer cannot differ (a later merge is followed by
        the store through the merged-away profile), and most events are of this kind."""
        settled: dict[tuple[Key, ...], str] = {}
        profile_ids = []
        for message, keys in zip(messages, keyed, strict=True):
            context = message.context
            if (
                message.previous_id is not None
                or message.type == "identify"
                or (context and context.get("traits"))
            ):
                profile_ids.append(self.resolve(message, keys))
                continue
            signature = tuple(keys)
            profile_id = settled.get(signature)
            if profile_id is None:
                profile_id = settled[signature] = self.resolve(message, keys)
            profile_ids.append(profile_id)
        return profile_ids

    def _known(self, keys: list[Key]) -> str | None:
        """Fast path: every identifier already belongs to one profile, so nothing changes."""
        owners = self.owners
        first = owners.get(keys[0]) if keys else None
        if first is None:
            return None
        for key in keys[1:]:
            if owners.get(key) != first:
                return None
        return first

    def _attach_with_limits(self, keys: list[Key], message: Message) -> str:
        while True:
            target = self._try_attach(keys, message)
            if target is not None:
                return target
            keys = keys[:-1]

    def _dedupe_keys(self, keys: list[Key]) -> list[Key]:
        rank = self._rank
        return sorted(dict.fromkeys(keys), key=lambda k: rank.get(k[0], len(rank)))

    def _try_attach(self, keys: list[Key], message: Message) -> str | None:
        """Attach `keys` to one profile if no limit breaks; None means: drop one key, retry."""
        if not keys:
            return self._new_profile(("message", message.message_id), message)
        owned = list(dict.fromkeys(self.owners[k] for k in keys if k in self.owners))
        combined: dict[str, set[str]] = {}
        for profile_id in owned:
            for kind, values in self.profiles[profile_id].limited.items():
                combined.setdefault(kind, set()).update(values)
        for kind, value in keys:
            if kind in self.limited_kinds:
                combined.setdefault(kind, set()).add(value)
        for kind, values in combined.items():
            limit = self.config.limit_for(kind)
            if limit is not None and len(values) > limit:
                if len(keys) == 1:
                    return owned[0] if owned else self._new_profile(keys[0], message)
                return None
        target = owned[0] if owned else self._new_profile(keys[0], message)
        for other in owned[1:]:
            via = next(k[0] for k in keys if self.owners.get(k) == other)
            self._merge(other, target, message, via)
        for key in keys:
            if key not in self.owners:
                self._own(key, target, message.timestamp_us)
        return target

    def _new_profile(self, key: tuple[str, str], message: Message) -> str:
        digest = hashlib.sha256(f"{key[0]}:{key[1]}".encode()).hexdigest()[:20]
        profile_id = f"p_{digest}"
        if profile_id not in self.profiles:
            self.profiles[profile_id] = ProfileState(profile_id)
            self.changes.new_profiles.add(profile_id)
        return profile_id

    def _keys_of(self) -> dict[str, set[Key]]:
        """Reverse index profile → identifiers, built on the first merge of a batch."""
        if self._reverse is None:
            self._reverse = {}
            for key, owner in self.owners.items():
                self._reverse.setdefault(owner, set()).add(key)
        return self._reverse

    def _own(self, key: Key, profile_id: str, at_us: int) -> None:
        self.owners[key] = profile_id
        if self._reverse is not None:
            self._reverse.setdefault(profile_id, set()).add(key)
        self.changes.new_identities.append((key[0], key[1], profile_id, at_us))
        if key[0] in self.limited_kinds:
            self.profiles[profile_id].limited.setdefault(key[0], set()).add(key[1])

    def _merge(self, source: str, target: str, message: Message, kind: str) -> None:
        old, new = self.profiles[source], self.profiles[target]
        for k, values in old.limited.items():
            new.limited.setdefault(k, set()).update(values)
        for name, (value, ts) in old.traits.items():  # this batch's updates; the store merges
            current = new.traits.get(name)  # what was stored before, by the same rule
            if current is None or ts > current[1]:
                new.traits[name] = (value, ts)
        moved = self._keys_of().pop(source, set())
        for key in moved:
            self.owners[key] = target
        self._keys_of().setdefault(target, set()).update(moved)
        del self.profiles[source]
        self.changes.merges.append(
            Merge(source, target, message.message_id, kind, message.timestamp_us)
        )
        self.changes.dirty_traits.add(target)

    def _apply_traits(self, profile_id: str, message: Message) -> None:
        sources = person_traits(message)
        if not sources:
            return
        traits = self.profiles[profile_id].traits
        for incoming in sources:  # identify traits come last, so they win over context.traits
            for name, value in incoming.items():
                current = traits.get(name)
                if current is None or message.timestamp_us >= current[1]:
                    traits[name] = (value, message.timestamp_us)
                    self.changes.dirty_traits.add(profile_id)


def priority_order(config: IdentityConfig) -> list[str]:
    """Identifier kinds from strongest to weakest: user_id, primary, secondary, anonymous_id."""
    kinds = ["user_id", config.primary, *config.secondary, "anonymous_id"]
    return list(dict.fromkeys(kinds))


def limited_kinds(config: IdentityConfig) -> list[str]:
    """The identifier kinds a profile may hold only a limited number of (user_id, email)."""
    return [k for k in priority_order(config) if config.limit_for(k) is not None]


def person_traits(message: Message) -> list[dict[str, Any]]:
    """The trait objects describing the person: `context.traits`, then an identify's `traits`."""
    sources = []
    context = message.context
    context_traits = context.get("traits") if context else None
    if context_traits.__class__ is dict:
        sources.append(context_traits)
    if message.type == "identify" and message.traits:
        sources.append(message.traits)
    return sources


def trait_identifier_kinds(config: IdentityConfig) -> tuple[str, ...]:
    """The identifier kinds read from traits: the primary and secondary ones, ids aside."""
    kinds = dict.fromkeys((config.primary, *config.secondary))
    return tuple(k for k in kinds if k not in ("user_id", "anonymous_id"))


def extract_identifiers(
    message: Message,
    config: IdentityConfig,
    changes: IdentityChanges,
    trait_kinds: tuple[str, ...] | None = None,
) -> list[Key]:
    """The normalised identifiers a message carries (an alias's previous id aside).

    Unusable ones are recorded in `changes`, not kept.
    """
    keys: list[Key] = []
    if message.user_id is not None:
        keys.append(("user_id", message.user_id))
    if message.anonymous_id is not None:
        keys.append(("anonymous_id", message.anonymous_id))
    sources = person_traits(message)
    if not sources:
        return keys
    for kind in trait_identifier_kinds(config) if trait_kinds is None else trait_kinds:
        for traits in sources:
            raw = traits.get(kind)
            if raw is None or raw == "":
                continue
            try:
                keys.append((kind, normalize_identifier(kind, raw, config.default_region)))
            except IdentifierError as exc:
                changes.rejections.append(IdentifierRejection(message.message_id, kind, str(exc)))
    return keys


def preload_keys(message: Message, keys: list[Key]) -> list[Key]:
    """The keys to load before resolving: an alias's previous id under both possible kinds."""
    if message.previous_id is None:
        return keys
    return [*keys, ("user_id", message.previous_id), ("anonymous_id", message.previous_id)]
