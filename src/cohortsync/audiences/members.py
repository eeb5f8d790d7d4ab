"""Who is in a segment or audience: now, at a past instant from history, or a live preview."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import pyarrow.compute as pc

from cohortsync.audiences.compute import AUDIENCE, SEGMENT, compute_members
from cohortsync.errors import InputError
from cohortsync.segments.ast import SegmentProject
from cohortsync.segments.explain import explain_audience, explain_segment
from cohortsync.store.base import Store

MEMBER_KINDS = ("user_id", "email", "phone")
SAMPLE = 10


@dataclass(frozen=True)
class Member:
    """One member: its profile, first identifier of each kind, and (audiences) holdout."""

    profile_id: str
    user_id: str | None
    email: str | None
    phone: str | None
    holdout: bool | None = None


@dataclass(frozen=True)
class Preview:
    """A segment or audience computed now: size, a sample, overlap with every other audience."""

    kind: str
    name: str
    size: int
    holdout: int
    sample: list[Member]
    overlap: dict[str, int] = field(default_factory=dict)
    explanation: str = ""


def resolve(project: SegmentProject, name: str) -> str:
    """The kind of a name (an audience wins over a segment of the same name), or InputError."""
    if name in project.audiences:
        return AUDIENCE
    if name in project.segments:
        return SEGMENT
    known = [*project.audiences, *project.segments]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f": did you mean {', '.join(close)}?" if close else ""
    if not known:
        hint = ": the project defines no segments or audiences yet"
    elif not close:
        hint = f": known names are {', '.join(sorted(known))}"
    raise InputError(f"no segment or audience is named {name!r}{hint}")


def with_identifiers(store: Store, kind: str, members: list[tuple[str, bool]]) -> list[Member]:
    """Members with their first user_id, email and phone (holdout only for audiences)."""
    found = store.identifiers([p for p, _ in members], MEMBER_KINDS)
    result = []
    for profile_id, holdout in members:
        ids = found.get(profile_id, {})
        result.append(
            Member(
                profile_id,
                ids.get("user_id"),
                ids.get("email"),
                ids.get("phone"),
                holdout if kind == AUDIENCE else None,
            )
        )
    return result


def members(
    store: Store, project: SegmentProject, name: str, at_us: int | None = None
) -> list[Member]:
    """Current members from history, or members as of `at_us` replayed from history."""
    kind = resolve(project, name)
    return with_identifiers(store, kind, store.membership(kind, name, at_us))


def overlaps(store: Store, project: SegmentProject) -> dict[tuple[str, str], int]:
    """Current members shared by every pair of audiences (the diagonal is each one's size)."""
    current = {
        name: {p for p, _ in store.membership(AUDIENCE, name, None)} for name in project.audiences
    }
    return {(a, b): len(current[a] & current[b]) for a in current for b in current}


def explain(project: SegmentProject, name: str) -> str:
    """The plain-English entry and exit rules of a segment or audience."""
    if resolve(project, name) == AUDIENCE:
        return explain_audience(project.audiences[name], project)
    return explain_segment(project.segments[name], project)


def preview(store: Store, project: SegmentProject, name: str, at_us: int) -> Preview:
    """Compute `name` and every audience live as of `at_us` (nothing recorded)."""
    kind = resolve(project, name)
    computed = compute_members(store, project, at_us)
    rows = computed.members(kind, name)
    ids = rows["profile_id"]
    overlap = {
        other: int(
            pc.sum(pc.is_in(computed.members(AUDIENCE, other)["profile_id"], ids)).as_py() or 0
        )
        for other in computed.audience_names
        if not (kind == AUDIENCE and other == name)
    }
    sample = rows.slice(0, SAMPLE)
    flagged = list(
        zip(sample["profile_id"].to_pylist(), sample["holdout"].to_pylist(), strict=True)
    )
    return Preview(
        kind,
        name,
        rows.num_rows,
        int(pc.sum(rows["holdout"]).as_py() or 0),
        with_identifiers(store, kind, flagged),
        overlap,
        explain(project, name),
    )
