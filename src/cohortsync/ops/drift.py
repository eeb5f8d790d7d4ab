"""Drift: what ad platforms that can read an audience back show, against what cohortsync set.

Only destinations whose capabilities say `reads_back` are asked, never a dry-run one, and only
for audiences they already received (an audience not synced yet is not on the platform).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from cohortsync.destinations.base import DeliveryError
from cohortsync.store.outbox import RouteStatus
from cohortsync.sync.configure import SyncSetup

READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class Drift:
    """One audience on one destination that reads back: what differs (`problem`, None when
    the platform shows what cohortsync set), or why it could not be read (`error`)."""

    destination: str
    audience: str
    problem: str | None = None
    platform_name: str | None = None
    error: str | None = None


def read_drift(
    setup: SyncSetup,
    root: Path,
    delivered: Iterable[tuple[str, str]],
    http: httpx.Client | None = None,
    clock: Callable[[], datetime] | None = None,
) -> list[Drift]:
    """Read back every delivered (destination, audience) whose destination can; one `Drift`
    per audience asked, ordered by destination then audience."""
    wanted: dict[str, list[str]] = {}
    for destination, audience in sorted(set(delivered)):
        cls = setup.classes.get(destination)
        if cls is None or not cls.capabilities.reads_back or setup.configs[destination].dry_run:
            continue
        wanted.setdefault(destination, []).append(audience)
    if not wanted:
        return []
    client = http or httpx.Client(timeout=READ_TIMEOUT)
    try:
        found: list[Drift] = []
        for destination, audiences in wanted.items():
            found.extend(_read(setup, root, destination, audiences, client, clock or _now))
        return found
    finally:
        if http is None:
            client.close()


def _read(
    setup: SyncSetup,
    root: Path,
    destination: str,
    audiences: list[str],
    http: httpx.Client,
    clock: Callable[[], datetime],
) -> list[Drift]:
    """One destination's read-back; a failure is reported per audience, never raised."""
    opened = setup.open(root, http, clock, only=destination)[destination]
    try:
        backs = opened.read_back(audiences)
    except DeliveryError as exc:
        return [Drift(destination, a, error=str(exc)) for a in audiences]
    finally:
        opened.close()
    drifts = []
    for back in backs:
        if not back.found:
            problem = (
                f"no audience there is named {back.audience} or still carries the description "
                "cohortsync gave it (deleted, or renamed and edited)"
            )
            drifts.append(Drift(destination, back.audience, problem))
        else:
            drifts.append(Drift(destination, back.audience, back.drift, back.name))
    return drifts


def _now() -> datetime:
    return datetime.now(UTC)


def delivered(rows: Iterable[RouteStatus]) -> list[tuple[str, str]]:
    """The (destination, audience) routes a destination already received something of."""
    return [
        (r.destination, r.audience)
        for r in rows
        if r.audience is not None and (r.acknowledged or r.last_sync is not None)
    ]
