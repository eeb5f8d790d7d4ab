"""What each destination of an audience holds for one profile, and its last delivery, read
from the sync tables (always as they are now)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cohortsync.moments import to_datetime
from cohortsync.store.outbox import DRY_REMOVED, DRY_RUN, MEMBER, REJECTED, Route
from cohortsync.sync.profile_state import Delivery, Membership, Queued, RouteState


@dataclass(frozen=True)
class Downstream:
    """One destination of an audience, for one profile.

    `status` is one of: added, removed, pending add, pending remove, sending add, sending
    remove, dry run, rejected, dead-lettered, not sent: holdout, not sent: no identifier,
    not sent (not a member), nothing sent. `detail` says it in a sentence with times.
    """

    destination: str
    status: str
    detail: str
    holds: bool
    """Whether the destination acknowledged holding the profile (a dry run holds nothing)."""
    dry_run: bool
    takes_holdout: bool
    state: RouteState


def iso(us: int) -> str:
    """An instant as ISO-8601 UTC with a Z."""
    return to_datetime(us).isoformat().replace("+00:00", "Z")


def downstream(
    routes: Sequence[Route],
    accepts: Mapping[tuple[str, str], Sequence[str]],
    kinds_held: Sequence[str],
    recorded: Membership | None,
    states: Mapping[tuple[str, str], RouteState],
) -> list[Downstream]:
    """Per route of one audience, what its destination holds for the profile and why."""
    found = []
    for route in routes:
        state = states.get((route.destination, route.audience), RouteState())
        wanted = accepts.get((route.destination, route.audience), ())
        status, detail = _describe(route, state, recorded, wanted, kinds_held)
        holds = state.status in (MEMBER, DRY_REMOVED)
        found.append(
            Downstream(
                route.destination,
                status,
                detail,
                holds,
                route.dry_run,
                route.include_holdout,
                state,
            )
        )
    return found


def _queued(q: Queued) -> tuple[str, str]:
    if not q.in_flight:
        return f"pending {q.op}", f"{q.op} queued at {iso(q.changed_at_us)}, not yet sent"
    text = f"{q.op} being sent (attempt {q.attempts + 1})"
    if q.next_attempt_us is not None and q.attempts:
        text += f", next try at {iso(q.next_attempt_us)}"
    if q.last_error:
        text += f", last error: {q.last_error}"
    return f"sending {q.op}", text


def _delivered(d: Delivery) -> str:
    said = f"{d.op} {d.outcome.replace('_', ' ')} at {iso(d.at_us)}"
    return said + (f" ({d.reason})" if d.reason else "")


def _describe(
    route: Route,
    state: RouteState,
    recorded: Membership | None,
    wanted: Sequence[str],
    kinds_held: Sequence[str],
) -> tuple[str, str]:
    """(status, sentence) of one route."""
    if state.queued:
        return _queued(state.queued[-1])
    if state.dead:
        dead = state.dead[-1]
        return "dead-lettered", f"{dead.op} dead-lettered at {iso(dead.at_us)}: {dead.reason}"
    if state.status in (MEMBER, DRY_REMOVED):
        since = iso(state.updated_at_us or 0)
        text = f"holds the profile (acknowledged {since})"
        if state.holdout:
            text += ", flagged holdout"
        if state.status == DRY_REMOVED:
            text += "; its removal was only written as a dry run"
        return "added", text
    if state.status == DRY_RUN:
        since = iso(state.updated_at_us or 0)
        return "dry run", f"add written as a dry run at {since}: the destination holds nothing"
    if state.status == REJECTED:
        return "rejected", f"refused the add: {state.reason or 'no reason given'}"
    if recorded is not None and recorded.holdout and not route.include_holdout:
        return "not sent: holdout", "held out: ad platforms never receive the control group"
    if recorded is not None and wanted and not set(wanted) & set(kinds_held):
        kinds = " or ".join(wanted)
        return "not sent: no identifier", f"the profile has no {kinds} this destination matches"
    last = state.last_delivery
    if last is not None and last.op == "remove" and last.outcome == "acknowledged":
        return "removed", f"removed: {_delivered(last)}"
    if recorded is None:
        return "not sent (not a member)", "not a recorded member: nothing to hold"
    return "nothing sent", "a recorded member not planned yet: run `cohortsync sync`"


def last_delivery(state: RouteState) -> Delivery | None:
    """The latest resolved or dead-lettered record of the route."""
    seen = list(state.dead)
    if state.last_delivery is not None:
        seen.append(state.last_delivery)
    return max(seen, key=lambda d: d.at_us) if seen else None
