"""Locked names: each audience compared with `cohortsync.lock`, the refusal `compute`, `sync`
and `serve` make before doing anything, and `cohortsync lock` writing the file.

A synced audience whose logic changed while its `version:` stayed is refused, and so is one
that disappeared from the project: the name destinations know must keep meaning what it meant
when they were given it. A rename is a new audience plus a retired one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from cohortsync.errors import InputError
from cohortsync.ops.fingerprint import PART_WORDS, fingerprint
from cohortsync.ops.lock_file import LOCK_FILE, Locked, LockFile, read_lock, write_lock
from cohortsync.segments.ast import Audience, SegmentProject
from cohortsync.sync.downstream import Downstream


class State(StrEnum):
    """How an audience stands against the lock."""

    unlocked = "unlocked"  # not in the lock (never synced, or no lock yet)
    same = "same"  # logic and version as locked
    raised = "raised"  # version raised above the lock: an intended change, to accept
    changed = "changed"  # logic differs, version not raised: refused
    lowered = "lowered"  # version below the lock: refused
    revived = "revived"  # retired in the lock, back without a raised version: refused
    retired = "retired"  # `retired: true` in the project
    missing = "missing"  # locked, not retired, gone from the project: refused


REFUSED = frozenset({State.changed, State.lowered, State.revived, State.missing})


@dataclass(frozen=True)
class Standing:
    """One audience against the lock: its state, what changed, and the refusal if refused."""

    name: str
    state: State
    version: int | None
    locked_version: int | None
    changed_parts: tuple[str, ...] = ()
    where: str = LOCK_FILE
    """`file:line` of the audience in the project, else the lock file."""

    @property
    def refused(self) -> bool:
        return self.state in REFUSED

    @property
    def logic_changed(self) -> bool:
        """Its members may differ from what the lock's version gives."""
        return bool(self.changed_parts) or self.state is State.retired

    def problem(self) -> str:
        """The one-line refusal: where, what changed, how to proceed."""
        name, locked = self.name, self.locked_version
        nxt = (locked or 0) + 1
        if self.state is State.changed:
            what = _words(self.changed_parts)
            return (
                f"{self.where}: audience {name}: its {what} changed since {LOCK_FILE} locked "
                f"version {locked}, and version: was not raised — raise version: to {nxt}, "
                f"check who enters and leaves with `cohortsync plan`, then run "
                f"`cohortsync lock --accept {name}` (or undo the change)"
            )
        if self.state is State.lowered:
            return (
                f"{self.where}: audience {name}: version {self.version} is below version "
                f"{locked} in {LOCK_FILE} — set version: back to {locked} (or to {nxt} with "
                f"`cohortsync lock --accept {name}` for a change)"
            )
        if self.state is State.revived:
            return (
                f"{self.where}: audience {name}: retired in {LOCK_FILE}, it is back "
                f"without a new version — give it a new name, or raise version: to {nxt} and "
                f"run `cohortsync lock --accept {name}`"
            )
        return (
            f"{LOCK_FILE}: audience {name} was synced but is gone from the project — put it "
            "back with retired: true, run `cohortsync compute` and `cohortsync sync` so every "
            "destination empties it, run `cohortsync lock`, then remove it (a rename is a new "
            "audience plus a retired one)"
        )


def _words(parts: Sequence[str]) -> str:
    words = [PART_WORDS[p] for p in parts]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def standings(lock: LockFile | None, project: SegmentProject) -> list[Standing]:
    """Every audience of the project, then every locked one gone from it, against `lock`."""
    locked = lock.audiences if lock is not None else {}
    found = [_standing(a, locked.get(a.name), project) for a in project.audiences.values()]
    for name, entry in sorted(locked.items()):
        if name not in project.audiences and entry.retired_at is None:
            found.append(Standing(name, State.missing, None, entry.version))
    return found


def _standing(audience: Audience, entry: Locked | None, project: SegmentProject) -> Standing:
    where = _where(audience)
    if audience.retired:
        locked = None if entry is None else entry.version
        return Standing(audience.name, State.retired, audience.version, locked, (), where)
    if entry is None:
        return Standing(audience.name, State.unlocked, audience.version, None, (), where)
    parts = tuple(fingerprint(audience, project).changed_parts(entry.parts))
    version, locked = audience.version, entry.version
    if version > locked:
        state = State.raised
    elif version < locked:
        state = State.lowered
    elif entry.retired_at is not None:
        state = State.revived
    else:
        state = State.changed if parts else State.same
    return Standing(audience.name, state, version, locked, parts, where)


def _where(audience: Audience) -> str:
    if audience.position is None:
        return LOCK_FILE
    return f"{audience.position.file}:{audience.position.line}"


def check_lock(root: Path, project: SegmentProject) -> None:
    """Refuse (InputError, one line per problem) when the project breaks its lock; no lock
    file refuses nothing (the first run)."""
    lock = read_lock(root)
    if lock is None:
        return
    problems = [s.problem() for s in standings(lock, project) if s.refused]
    if problems:
        raise LockRefusedError("\nerror: ".join(problems))


class LockRefusedError(InputError):
    """The project breaks `cohortsync.lock`: each line one audience, what changed, what to do."""


@dataclass
class LockReport:
    """What `cohortsync lock` did: the lock written, and per audience what happened to it."""

    path: str
    written: bool
    accepted: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    """Audiences left as they were, with why and what to do."""
    audiences: dict[str, dict[str, object]] = field(default_factory=dict)
    """Every locked audience after the run: version, fingerprint, destinations, retired_at."""


def lock(
    root: Path,
    project: SegmentProject,
    downstream: Mapping[str, Downstream],
    accept: Sequence[str] = (),
    now: datetime | None = None,
) -> LockReport:
    """Write `cohortsync.lock`: add every synced audience not locked yet, record the changes
    named in `accept` (their version must be raised), mark retired audiences empty downstream
    as retired; note what is left as it was. Unknown or not-raised `accept` names refuse."""
    at = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    old = read_lock(root) or LockFile()
    entries = dict(old.audiences)
    by_name = {s.name: s for s in standings(old, project)}
    for name in accept:
        _check_accept(name, by_name.get(name), project)
    report = LockReport(str(root / LOCK_FILE), False)
    for audience in project.audiences.values():
        name, standing = audience.name, by_name[audience.name]
        entry = entries.get(name)
        if standing.state is State.retired:
            _retire(audience, entry, downstream.get(name), entries, report, at)
            continue
        print_ = fingerprint(audience, project)
        if entry is None:
            if name in downstream:
                entries[name] = Locked(
                    name,
                    print_.value,
                    print_.parts,
                    audience.version,
                    tuple(sorted(audience.destinations)),
                ).accept(print_.value, print_.parts, audience.version, at)
                report.added.append(name)
            else:
                report.notes[name] = "not synced yet: locked after its first sync"
            continue
        if name in accept:
            entries[name] = entry.accept(print_.value, print_.parts, audience.version, at)
            report.accepted.append(name)
        elif standing.state is not State.same:
            report.notes[name] = _pending(standing)
        current = entries[name]
        entries[name] = _with_destinations(current, audience)
    for standing in by_name.values():
        if standing.state is State.missing:
            report.notes[standing.name] = standing.problem().split(": ", 1)[1]
    new = LockFile(entries)
    report.written = write_lock(root, new)
    report.audiences = {
        name: {
            "version": e.version,
            "fingerprint": e.fingerprint,
            "destinations": list(e.destinations),
            "retired_at": e.retired_at,
        }
        for name, e in sorted(entries.items())
    }
    return report


def _check_accept(name: str, standing: Standing | None, project: SegmentProject) -> None:
    if standing is None or name not in project.audiences:
        known = ", ".join(sorted(project.audiences)) or "none"
        raise InputError(f"--accept {name}: no audience of that name: known audiences: {known}")
    if standing.state is State.unlocked:
        raise InputError(
            f"--accept {name}: it is not locked yet, so there is no change to accept — it is "
            "locked by `cohortsync lock` once it has been synced"
        )
    if standing.state in (State.changed, State.lowered, State.revived):
        raise InputError(
            f"--accept {name}: raise version: to {(standing.locked_version or 0) + 1} first "
            f"({standing.where}), so everyone reading the catalog sees the rule changed"
        )
    if standing.state is State.same:
        raise InputError(
            f"--accept {name}: nothing to accept — its logic and version are as locked"
        )
    if standing.state is State.retired:
        raise InputError(
            f"--accept {name}: it is retired — run `cohortsync lock` once destinations are empty"
        )


def _pending(standing: Standing) -> str:
    if standing.state is State.raised:
        what = _words(standing.changed_parts) if standing.changed_parts else "version"
        return (
            f"version {standing.version} ({what} changed) not accepted yet: read "
            f"`cohortsync plan`, then run `cohortsync lock --accept {standing.name}`"
        )
    return standing.problem().split(": ", 2)[2]


def _retire(
    audience: Audience,
    entry: Locked | None,
    below: Downstream | None,
    entries: dict[str, Locked],
    report: LockReport,
    at: str,
) -> None:
    """A `retired: true` audience: marked retired once nothing is held or queued for it."""
    name = audience.name
    if below is not None and not below.empty:
        report.notes[name] = (
            f"retired, but destinations still hold {below.held:,} and {below.queued:,} changes "
            "are queued: run `cohortsync compute` and `cohortsync sync`, then lock again"
        )
        return
    if entry is None:
        report.notes[name] = "retired and never synced: remove it from the project"
        return
    if entry.retired_at is None:
        entries[name] = Locked(
            name,
            entry.fingerprint,
            entry.parts,
            entry.version,
            entry.destinations,
            entry.history,
            at,
        )
        report.retired.append(name)
    report.notes[name] = "retired and empty downstream: it can be removed from the project"


def _with_destinations(entry: Locked, audience: Audience) -> Locked:
    """Destinations are recorded, not fingerprinted: adding one needs no new version."""
    destinations = tuple(sorted(audience.destinations))
    if entry.destinations == destinations:
        return entry
    return Locked(
        entry.name,
        entry.fingerprint,
        entry.parts,
        entry.version,
        destinations,
        entry.history,
        entry.retired_at,
    )
