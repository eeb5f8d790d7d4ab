"""What the store and the destinations show for one test profile: membership, deliveries.

Each check reads what cohortsync recorded (memberships; `delivery_log` and
`destination_state`, written in the transaction that took a destination's answer) and, for a
destination set `dry_run: true`, the request file a dry run wrote for the batch, which must
hold the profile's hashed email (or its id, for a system that is sent ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from cohortsync.destinations.hashing import hash_identifier
from cohortsync.store.base import Store
from cohortsync.store.outbox import DRY_RUN, MEMBER

_MEMBERSHIP = """SELECT holdout FROM memberships WHERE kind = 'audience' AND name = $audience
AND profile_id = $profile AND exited_at IS NULL"""

_DELIVERED = """SELECT op, outcome, reason, resolved_at, batch_id FROM delivery_log
WHERE kind = $kind AND destination = $destination AND profile_id = $profile
AND coalesce(audience, '') = $audience AND resolved_at >= $since
ORDER BY resolved_at DESC, record_id DESC LIMIT 1"""

_HELD = """SELECT status, reason FROM destination_state WHERE destination = $destination
AND audience = $audience AND profile_id = $profile"""

_WAITING = """SELECT count(*) FROM outbox WHERE destination = $destination
AND audience = $audience AND profile_id = $profile"""

_DEAD = """SELECT reason FROM dead_letters WHERE destination = $destination
AND coalesce(audience, '') = $audience AND profile_id = $profile AND dead_at >= $since
ORDER BY dead_at DESC LIMIT 1"""


@dataclass(frozen=True)
class Delivered:
    """The latest record a destination resolved for one profile (and audience)."""

    op: str
    outcome: str
    reason: str | None
    resolved_at: datetime
    batch_id: str


@dataclass(frozen=True)
class Downstream:
    """What one destination shows for one profile and audience."""

    delivered: Delivered | None
    held: str | None
    """`destination_state.status` (member, rejected, dry_run, …) or None when it holds none"""
    reason: str | None
    waiting: int
    dead: str | None


class Inspector:
    """Reads memberships and deliveries of test profiles, and dry-run request files."""

    def __init__(self, store: Store, dry_run_dir: Path) -> None:
        self.store = store
        self.dry_run_dir = dry_run_dir
        self._files: dict[str, dict[str, str]] = {}

    def _read(self, template: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with self.store.sql.reading() as tx:
            return tx.run(template, params)

    def member(self, audience: str, profile_id: str) -> bool | None:
        """The open membership's holdout flag, or None when not a member."""
        rows = self._read(_MEMBERSHIP, {"audience": audience, "profile": profile_id})
        return bool(rows[0][0]) if rows else None

    def downstream(
        self, destination: str, audience: str, profile_id: str, since: datetime
    ) -> Downstream:
        """What `destination` shows for the profile in `audience` since `since`."""
        key = {"destination": destination, "audience": audience, "profile": profile_id}
        return Downstream(
            self.delivered("changes", destination, audience, profile_id, since),
            *(self._held(key)),
            int(self._read(_WAITING, key)[0][0]),
            self._dead(key, since),
        )

    def delivered(
        self, kind: str, destination: str, audience: str, profile_id: str, since: datetime
    ) -> Delivered | None:
        """The latest record of `kind` the destination resolved for the profile since `since`
        (`audience` '' for conversions)."""
        rows = self._read(
            _DELIVERED,
            {
                "kind": kind,
                "destination": destination,
                "audience": audience,
                "profile": profile_id,
                "since": since,
            },
        )
        if not rows:
            return None
        op, outcome, reason, at, batch = rows[0]
        return Delivered(str(op), str(outcome), reason, at, str(batch))

    def _held(self, key: dict[str, Any]) -> tuple[str | None, str | None]:
        rows = self._read(_HELD, key)
        return (str(rows[0][0]), rows[0][1]) if rows else (None, None)

    def _dead(self, key: dict[str, Any], since: datetime) -> str | None:
        rows = self._read(_DEAD, {**key, "since": since})
        return str(rows[0][0]) if rows else None

    def in_dry_run(self, destination: str, batch_id: str, tokens: tuple[str, ...]) -> bool:
        """Whether the dry-run file written for `batch_id` names one of `tokens`."""
        found = self._files.get(destination, {})
        if batch_id not in found:
            found = self._files[destination] = _batches(self.dry_run_dir / destination)
        text = found.get(batch_id, "")
        return any(token in text for token in tokens)


def _batches(folder: Path) -> dict[str, str]:
    """Each dry-run file of a destination's folder, by the batch id it was written for."""
    found: dict[str, str] = {}
    for path in sorted(folder.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        try:
            batch = orjson.loads(text).get("batch_id")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if isinstance(batch, str):
            found[batch] = text
    return found


def tokens(email: str, profile_id: str, user_id: str) -> tuple[str, ...]:
    """How a profile can appear in a request: its email hashed the way each platform hashes
    it, its user id, its profile id."""
    hashed = {
        hash_identifier("email", email, platform) for platform in ("meta", "google", "tiktok")
    }
    return (*sorted(h for h in hashed if h), user_id, profile_id)


ACKED = ("acknowledged", DRY_RUN)
HOLDING = (MEMBER, DRY_RUN)
