"""The identity graph held in memory by the process that owns an embedded store.

DuckDB allows one writing process per file, so that process sees every change: a write-through
copy of identifier → profile answers each batch's lookups with dictionary reads instead of a
join over the whole `identities` table (~10 ms a commit, growing with the table).
"""

from __future__ import annotations

from collections.abc import Iterable

from cohortsync.store.records import IdentityChanges, Key, ProfileState


class IdentityCache:
    """Identifier owners, merged-away profiles, and each profile's limited identifiers.

    It also knows which live profiles have absorbed others and which have stored traits, so a
    merge skips the statements that would find nothing to move (each scans a whole table).
    """

    def __init__(
        self,
        rows: Iterable[tuple[str, str, str]],
        limited_kinds: Iterable[str],
        absorbers: Iterable[str] = (),
        with_traits: Iterable[str] = (),
    ) -> None:
        self.limited_kinds = frozenset(limited_kinds)
        self._owners: dict[Key, str] = {}
        self._alias: dict[str, str] = {}
        self._limited: dict[str, dict[str, set[str]]] = {}
        self._absorbers = set(absorbers)
        self._with_traits = set(with_traits)
        for kind, value, profile_id in rows:
            self._own((kind, value), profile_id)

    def absorbed_any(self, profile_ids: Iterable[str]) -> bool:
        """Whether some profile was merged into one of `profile_ids` before."""
        return not self._absorbers.isdisjoint(profile_ids)

    def traits_of_any(self, profile_ids: Iterable[str]) -> bool:
        """Whether one of `profile_ids` has stored traits."""
        return not self._with_traits.isdisjoint(profile_ids)

    def lookup(self, keys: Iterable[Key]) -> tuple[dict[Key, str], dict[str, ProfileState]]:
        """Owners of `keys`, and the state of owning profiles (private copies, made on first use:
        most events belong to a known profile and need none)."""
        owners: dict[Key, str] = {}
        for key in keys:
            owner = self._owners.get(key)
            if owner is not None:
                owners[key] = self._canonical(owner)
        return owners, _ProfileStates(self._limited)

    def apply(
        self, changes: IdentityChanges, final: dict[str, str], traits_written: Iterable[str] = ()
    ) -> None:
        """Record a committed batch: merges (through `final` survivors), then new identifiers."""
        for merge in changes.merges:
            source = self._canonical(merge.source)
            target = self._canonical(final.get(merge.target, merge.target))
            if source == target:
                continue
            self._alias[source] = target
            self._absorbers.discard(source)
            self._absorbers.add(target)
            if source in self._with_traits:
                self._with_traits.discard(source)
                self._with_traits.add(target)
            moved = self._limited.pop(source, {})
            survivor = self._limited.setdefault(target, {})
            for kind, values in moved.items():
                survivor.setdefault(kind, set()).update(values)
        for kind, value, profile_id, _ in changes.new_identities:
            self._own((kind, value), self._canonical(final.get(profile_id, profile_id)))
        self._with_traits.update(self._canonical(p) for p in traits_written)

    def _own(self, key: Key, profile_id: str) -> None:
        if key in self._owners:
            return
        self._owners[key] = profile_id
        if key[0] in self.limited_kinds:
            self._limited.setdefault(profile_id, {}).setdefault(key[0], set()).add(key[1])

    def _canonical(self, profile_id: str) -> str:
        root = profile_id
        while root in self._alias:
            root = self._alias[root]
        while profile_id != root:  # compress the path for the next lookup
            parent = self._alias[profile_id]
            self._alias[profile_id] = root
            profile_id = parent
        return root


class _ProfileStates(dict[str, ProfileState]):
    """Profile states copied from the cache when resolution first asks for one."""

    def __init__(self, limited: dict[str, dict[str, set[str]]]) -> None:
        super().__init__()
        self._limited = limited

    def __missing__(self, profile_id: str) -> ProfileState:
        held = self._limited.get(profile_id, {})
        state = ProfileState(profile_id, limited={k: set(v) for k, v in held.items()})
        self[profile_id] = state
        return state
