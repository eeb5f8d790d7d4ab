"""Deterministic holdout: the same profile lands in the same group of an audience every run."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

BUCKETS = 10_000


def bucket(audience: str, profile_id: str) -> int:
    """The profile's bucket in 0..9,999 for this audience (first 60 bits of a SHA-256)."""
    digest = hashlib.sha256(f"{audience}:{profile_id}".encode()).hexdigest()
    return int(digest[:15], 16) % BUCKETS


def in_holdout(audience: str, profile_id: str, percent: float | None) -> bool:
    """Whether the profile is held back from the audience as part of its control group."""
    if not percent:
        return False
    return bucket(audience, profile_id) < percent * 100


def holdout_flags(audience: str, profile_ids: Iterable[str], percent: float | None) -> list[bool]:
    """`in_holdout` for each profile id, in order."""
    if not percent:
        return [False for _ in profile_ids]
    limit = percent * 100
    return [bucket(audience, p) < limit for p in profile_ids]
