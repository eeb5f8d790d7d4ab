"""What a test cohort is: profiles with their events (relative to now) and what each expects."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from cohortsync.segments.ast import SegmentProject
from cohortsync.segments.evaluate import EventRecord, ProfileHistory, evaluate

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
PURCHASE_EVENT = "order_completed"
PURCHASE_REVENUE = 40.0


@dataclass(frozen=True)
class PlannedEvent:
    """One track call of a test profile: its event key, how long before now, its properties."""

    event: str
    ago_us: int
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class TestProfile:
    """One profile of the cohort: identifiers, identify traits, events, expected audiences."""

    number: int
    email: str
    events: list[PlannedEvent]
    expect: set[str]
    phone: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    """The audience the profile was generated for (None for a cohort file's profiles)."""
    line: int | None = None
    """The cohort file's line that described it."""

    @property
    def user_id(self) -> str:
        """A stable user id that does not carry the email (ids may reach logs)."""
        return "cstest-" + hashlib.sha256(self.email.encode()).hexdigest()[:16]

    @property
    def masked(self) -> str:
        """The email as printed: `t***+3@example.com` (never the raw address)."""
        return mask_email(self.email)


def mask_email(email: str) -> str:
    """Keep the first letter, a `+tag` and the domain; hide the rest."""
    local, _, domain = email.partition("@")
    tag = local[local.index("+") :] if "+" in local else ""
    return f"{local[:1]}***{tag}@{domain}"


def history(
    profile: TestProfile, now_us: int, extra: tuple[PlannedEvent, ...] = ()
) -> ProfileHistory:
    """The profile as the Python evaluator sees it, with its events placed before `now_us`."""
    records = tuple(
        EventRecord(f"m{i}", e.event, now_us - e.ago_us, e.properties)
        for i, e in enumerate((*profile.events, *extra))
    )
    identifiers: dict[str, tuple[str, ...]] = {"email": (profile.email,)}
    identifiers["user_id"] = (profile.user_id,)
    if profile.phone:
        identifiers["phone"] = (profile.phone,)
    traits = {"email": profile.email, **profile.traits}
    return ProfileHistory(f"test-{profile.number}", records, traits, identifiers)


def audiences_of(
    project: SegmentProject, hist: ProfileHistory, instants: tuple[int, ...]
) -> set[str]:
    """The (live) audiences whose rule holds at every one of `instants`."""
    return {
        name
        for name, audience in project.audiences.items()
        if not audience.retired
        and all(evaluate(audience.condition, hist, at, project) for at in instants)
    }


def purchase(ago_us: int = 0) -> PlannedEvent:
    """The purchase every test profile makes once it was seen downstream."""
    return PlannedEvent(PURCHASE_EVENT, ago_us, {"revenue": PURCHASE_REVENUE, "currency": "USD"})
