"""`cohortsync explain`: why one profile is in or out of each audience.

The profile's history is read from the event log as real time reads it, every audience's rule
is traced node by node as of the instant asked (`segments.trace`), the exclusion or holdout
that removed it is named, the next instant its membership flips on its own is found with the
evaluator's `next_change` (and which window edge causes it), and each destination's state for
the profile is read from the sync tables.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from cohortsync.audiences.holdout import in_holdout
from cohortsync.errors import InputError
from cohortsync.identity.pii import scrub_identifiers
from cohortsync.ops.explain_downstream import Downstream, downstream, iso
from cohortsync.segments.ast import Audience, SegmentProject
from cohortsync.segments.evaluate import EventRecord, ProfileHistory, evaluate, next_change
from cohortsync.segments.trace import LeafChange, TraceNode, changes, trace
from cohortsync.store.base import Store
from cohortsync.store.outbox import Route
from cohortsync.sync.profile_state import Membership, event_keys, profile_ids, profile_state
from cohortsync.sync.realtime_state import realtime_for

IN, HELD_OUT, OUT = "in", "held_out", "out"


@dataclass(frozen=True)
class NextChange:
    """When the audience's rule next flips with no new event, and which window edge does it."""

    at_us: int
    becomes: bool
    why: tuple[str, ...]

    @property
    def summary(self) -> str:
        """`leaves at T: the added_to_cart of T0 leaves the window of "…"`."""
        verb = "enters" if self.becomes else "leaves"
        return f"{verb} at {iso(self.at_us)}: " + "; ".join(self.why)


@dataclass(frozen=True)
class AudienceWhy:
    """One audience for one profile: in, held out or out, and everything that decided it."""

    audience: str
    segment: str
    status: str
    reason: str
    excluded_by: tuple[str, ...]
    holdout_percent: float | None
    refresh: str
    recorded: Membership | None
    trace: TraceNode
    next_change: NextChange | None
    downstream: tuple[Downstream, ...]


@dataclass(frozen=True)
class ProfileWhy:
    """`cohortsync explain` for one profile as of one instant."""

    profile_id: str
    at_us: int
    past: bool
    """Evaluated as of an instant before now: events after it are left out; identify traits
    and identifiers, recorded memberships and the downstream part are as they are now."""
    events: int
    audiences: tuple[AudienceWhy, ...]


def pick_audiences(project: SegmentProject, name: str | None) -> list[Audience]:
    """Every audience, or the one named; an unknown name is an InputError with suggestions."""
    if name is None:
        return [project.audiences[n] for n in sorted(project.audiences)]
    if name in project.audiences:
        return [project.audiences[name]]
    if name in project.segments:
        using = sorted(a.name for a in project.audiences.values() if a.segment == name)
        hint = f": audiences built on it: {', '.join(using)}" if using else ""
        raise InputError(f"{name!r} is a segment, not an audience{hint}")
    close = difflib.get_close_matches(name, list(project.audiences), n=3, cutoff=0.5)
    if close:
        hint = f": did you mean {', '.join(close)}?"
    elif project.audiences:
        hint = f": known audiences are {', '.join(sorted(project.audiences))}"
    else:
        hint = ": the project defines no audiences yet"
    raise InputError(f"no audience named {name!r}{hint}")


def load_history(store: Store, ids: Sequence[str], at_us: int) -> ProfileHistory:
    """The profile's events up to `at_us` (merged profiles folded in), traits and identifiers,
    read as real-time evaluation reads them."""
    rows = realtime_for(store).histories([ids[0]], event_keys(store, ids))[0]
    return ProfileHistory(
        rows.profile_id,
        tuple(EventRecord(m, k, ts, props) for m, k, ts, props in rows.events if ts <= at_us),
        rows.traits,
        {kind: tuple(values) for kind, values in rows.identifiers.items()},
    )


def mask(value: Any) -> Any:
    """A trait value with any email or phone number in it replaced (`<email>`, `<phone>`)."""
    if isinstance(value, str):
        return scrub_identifiers(value)
    if isinstance(value, dict):
        return {k: mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    return value


def explain_profile(
    store: Store,
    project: SegmentProject,
    routes: Sequence[Route],
    accepts: dict[tuple[str, str], tuple[str, ...]],
    profile_id: str,
    at_us: int,
    now_us: int,
    audience: str | None = None,
) -> ProfileWhy:
    """Trace every audience (or the one named) for the profile as of `at_us`."""
    chosen = pick_audiences(project, audience)
    ids = profile_ids(store, profile_id)
    history = load_history(store, ids, at_us)
    state = profile_state(store, ids)
    recorded = {m.name: m for m in state.memberships if m.kind == "audience"}
    kinds_held = [k for k, v in history.identifiers.items() if v]
    found = []
    for one in chosen:
        why = _audience(project, history, at_us, one)
        mine = [r for r in routes if r.audience == one.name]
        held = downstream(mine, accepts, kinds_held, recorded.get(one.name), state.routes)
        found.append(_with(why, recorded.get(one.name), tuple(held)))
    return ProfileWhy(profile_id, at_us, at_us < now_us, len(history.events), tuple(found))


def _with(
    why: AudienceWhy, recorded: Membership | None, held: tuple[Downstream, ...]
) -> AudienceWhy:
    return replace(why, recorded=recorded, downstream=held)


def _audience(
    project: SegmentProject, history: ProfileHistory, at_us: int, audience: Audience
) -> AudienceWhy:
    """The trace, the verdict and the next change of one audience (downstream added later)."""
    rule = audience.condition
    root = trace(rule, history, at_us, project, mask)  # its truth is `evaluate(rule, …)`

    def holds(segment: str) -> bool:
        return evaluate(project.segments[segment].condition, history, at_us, project)

    in_segment = holds(audience.segment)
    excluded = tuple(x for x in audience.exclude if holds(x))
    percent = audience.holdout_percent
    if root.truth and in_holdout(audience.name, history.profile_id, percent):
        status = HELD_OUT
        reason = f"held out ({percent:g}%): in the audience, flagged, not sent to ad platforms"
    elif root.truth:
        status = IN
        reason = f"in: in segment {audience.segment}" + (
            " and in none of its exclusions" if audience.exclude else ""
        )
    elif not in_segment:
        status, reason = OUT, f"out: not in segment {audience.segment}"
    else:
        status = OUT
        reason = "out: removed by exclusion " + ", ".join(excluded)
    flip = next_change(rule, history, at_us, project)
    upcoming = None
    if flip is not None:
        leaves = changes(rule, history, at_us, flip, project)
        upcoming = NextChange(flip, not root.truth, tuple(_why(c) for c in leaves))
    return AudienceWhy(
        audience.name,
        audience.segment,
        status,
        reason,
        excluded,
        percent,
        audience.refresh,
        None,
        root,
        upcoming,
        (),
    )


def _why(change: LeafChange) -> str:
    """One leaf's flip in words: which event crosses which window."""
    parts = [
        f"the {e.event} of {iso(e.timestamp_us)} leaves the window of “{change.text}”"
        for e in change.leaving
    ]
    parts += [
        f"the {e.event} of {iso(e.timestamp_us)} enters the window of “{change.text}”"
        for e in change.entering
    ]
    if not parts:
        parts = [f"“{change.text}” becomes {'true' if change.becomes else 'false'}"]
    return "; ".join(parts)
