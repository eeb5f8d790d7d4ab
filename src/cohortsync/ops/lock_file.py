"""`cohortsync.lock`: the locked audiences, read and written as sorted, indented JSON.

One entry per audience that has been synced: its fingerprint (whole and by part), version,
destinations, when it was retired if it was, and its history — every accepted version with its
fingerprint and the instant it was accepted. The file sits next to `cohortsync.yml` and is
meant to be committed: the same project gives the same bytes, so a diff shows what changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from cohortsync.errors import InputError

LOCK_FILE = "cohortsync.lock"
FORMAT = 1


@dataclass(frozen=True)
class Accepted:
    """One accepted version of an audience's logic."""

    version: int
    fingerprint: str
    accepted_at: str


@dataclass(frozen=True)
class Locked:
    """One locked audience."""

    name: str
    fingerprint: str
    parts: dict[str, str]
    version: int
    destinations: tuple[str, ...]
    history: tuple[Accepted, ...] = ()
    retired_at: str | None = None
    """When `cohortsync lock` saw it retired and empty downstream (it may leave the project)."""

    def accept(self, fingerprint: str, parts: dict[str, str], version: int, at: str) -> Locked:
        """This entry with a new version accepted at `at` (ISO-8601), added to its history."""
        return replace(
            self,
            fingerprint=fingerprint,
            parts=dict(parts),
            version=version,
            history=(*self.history, Accepted(version, fingerprint, at)),
            retired_at=None,
        )


@dataclass(frozen=True)
class LockFile:
    """The whole lock: every locked audience by name."""

    audiences: dict[str, Locked] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """The file's bytes: sorted keys, two-space indent, a final newline."""
        value = {
            "format": FORMAT,
            "audiences": {
                name: {
                    "fingerprint": a.fingerprint,
                    "parts": a.parts,
                    "version": a.version,
                    "destinations": list(a.destinations),
                    "history": [
                        {
                            "version": h.version,
                            "fingerprint": h.fingerprint,
                            "accepted_at": h.accepted_at,
                        }
                        for h in a.history
                    ],
                    "retired_at": a.retired_at,
                }
                for name, a in sorted(self.audiences.items())
            },
        }
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def lock_path(root: Path) -> Path:
    """Where the lock of the project in `root` lives."""
    return root / LOCK_FILE


def read_lock(root: Path) -> LockFile | None:
    """The project's lock, or None when it has none yet (nothing is locked)."""
    path = lock_path(root)
    if not path.is_file():
        return None
    try:
        value = orjson.loads(path.read_bytes())
        return _parse(value)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"{LOCK_FILE}: cannot be read ({_reason(exc)}) — restore it from version control, "
            "or delete it and run `cohortsync lock` to lock every synced audience afresh"
        ) from None


def write_lock(root: Path, lock: LockFile) -> bool:
    """Write the lock if its bytes change; whether they did."""
    path = lock_path(root)
    data = lock.to_json()
    if path.is_file() and path.read_bytes() == data:
        return False
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
    return True


def _parse(value: Any) -> LockFile:
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise ValueError(f'expected a JSON object with "format": {FORMAT}')
    audiences: dict[str, Locked] = {}
    for name, entry in dict(value["audiences"]).items():
        audiences[str(name)] = Locked(
            str(name),
            str(entry["fingerprint"]),
            {str(k): str(v) for k, v in dict(entry["parts"]).items()},
            int(entry["version"]),
            tuple(str(d) for d in entry["destinations"]),
            tuple(
                Accepted(int(h["version"]), str(h["fingerprint"]), str(h["accepted_at"]))
                for h in entry["history"]
            ),
            None if entry.get("retired_at") is None else str(entry["retired_at"]),
        )
    return LockFile(audiences)


def _reason(exc: Exception) -> str:
    if isinstance(exc, orjson.JSONDecodeError):
        return f"not valid JSON at line {exc.lineno}"
    if isinstance(exc, KeyError):
        return f"an audience has no {exc.args[0]!r}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
