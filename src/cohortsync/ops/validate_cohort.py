"""Test cohorts: generated over the project's audiences, or read from a JSON Lines file.

A cohort file holds one profile per line:
`{"email": "test+1@example.com", "events": [{"event": "added_to_cart", "ago": "4h",
"properties": {"sku": "A"}}], "expect": ["cio_cart_abandon_6h"]}` with optional `"phone"` and
`"traits"` (sent by identify). Each mistake is reported as `FILE:LINE: what — how to fix it`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from cohortsync.errors import ConfigError, InputError
from cohortsync.ops.validate_generate import generate_for
from cohortsync.ops.validate_model import PlannedEvent, TestProfile
from cohortsync.segments.ast import US_PER, SegmentProject
from cohortsync.segments.names import event_key

MIN_PROFILES, MAX_PROFILES = 1, 50
_KEYS = {"email", "phone", "traits", "events", "expect"}


def generate(
    count: int, domain: str, project: SegmentProject, now_us: int, horizon_us: int
) -> tuple[list[TestProfile], dict[str, str]]:
    """`count` profiles `test+N@domain`, spread over the project's audiences in turn; also each
    audience no profile could be put into, with the reason."""
    if not MIN_PROFILES <= count <= MAX_PROFILES:
        raise InputError(
            f"--generate {count}: a test cohort has {MIN_PROFILES} to {MAX_PROFILES} profiles "
            "— 10 to 20 cover a project"
        )
    domain = domain.strip().lower()
    if not domain or "@" in domain or "." not in domain:
        raise InputError(f"--domain {domain!r} is not a mail domain — pass one, e.g. example.com")
    targets = [name for name, a in project.audiences.items() if not a.retired]
    if not targets:
        raise InputError("the project has no audiences to validate — add one under audiences:")
    missed: dict[str, str] = {}
    usable = list(targets)
    profiles: list[TestProfile] = []
    number = 0
    while len(profiles) < count and usable:
        audience = usable[len(profiles) % len(usable)]
        number += 1
        profile = TestProfile(number, f"test+{number}@{domain}", [], set())
        if generate_for(audience, project, profile, now_us, horizon_us):
            profiles.append(profile)
        else:
            usable.remove(audience)
            missed[audience] = (
                "no events found that put a profile into it and keep it there while the "
                "validation runs — list one in a --cohort file"
            )
            number -= 1
    covered = {p.target for p in profiles}
    for name in usable:
        if name not in covered:
            missed[name] = f"not covered: only {count} profiles — pass --generate {len(targets)}"
    return profiles, missed


def load_cohort(path: Path, project: SegmentProject) -> list[TestProfile]:
    """The profiles of a cohort file (JSON Lines); InputError `FILE:LINE: …` for a mistake."""
    if not path.is_file():
        raise InputError(f"{path}: no such file — check the --cohort path")
    profiles: list[TestProfile] = []
    seen: set[str] = set()
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        profile = _profile(text, len(profiles) + 1, project, str(path), line)
        if profile.email in seen:
            raise _error(path, line, f"email {profile.masked} is listed twice — one line each")
        seen.add(profile.email)
        profiles.append(profile)
    if not MIN_PROFILES <= len(profiles) <= MAX_PROFILES:
        raise InputError(
            f"{path}: {len(profiles)} profiles — a test cohort has {MIN_PROFILES} to "
            f"{MAX_PROFILES}, one JSON object a line"
        )
    return profiles


def _error(file: Path | str, line: int, message: str) -> ConfigError:
    return ConfigError(message, str(file), line)


def _profile(text: str, number: int, project: SegmentProject, file: str, line: int) -> TestProfile:
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _error(file, line, f"not JSON ({exc}) — write one JSON object a line") from None
    if not isinstance(raw, dict):
        raise _error(file, line, 'not a JSON object — write {"email": …, "events": […]}')
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        allowed = ", ".join(sorted(_KEYS))
        raise _error(file, line, f"unknown key {unknown[0]!r} — allowed: {allowed}")
    email = raw.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise _error(file, line, "email is missing or not an address — every profile needs one")
    expect = raw.get("expect", [])
    if not isinstance(expect, list) or not all(isinstance(x, str) for x in expect):
        raise _error(file, line, "expect must be a list of audience names")
    for name in expect:
        if name not in project.audiences:
            known = ", ".join(sorted(project.audiences)) or "none"
            raise _error(file, line, f"expect: no audience named {name!r} — known: {known}")
    phone = raw.get("phone")
    traits = raw.get("traits", {})
    if phone is not None and not isinstance(phone, str):
        raise _error(file, line, 'phone must be a string, e.g. "+14155550134"')
    if not isinstance(traits, dict):
        raise _error(file, line, "traits must be an object of identify traits")
    events = raw.get("events", [])
    if not isinstance(events, list):
        raise _error(file, line, 'events must be a list of {"event", "ago", "properties"}')
    planned = [_event(e, file, line) for e in events]
    return TestProfile(
        number, email.strip().lower(), planned, set(expect), phone, traits, None, line
    )


def _event(raw: Any, file: str, line: int) -> PlannedEvent:
    if not isinstance(raw, dict) or not isinstance(raw.get("event"), str):
        raise _error(file, line, 'each event needs "event": NAME (and "ago": "4h")')
    unknown = sorted(set(raw) - {"event", "ago", "properties"})
    if unknown:
        raise _error(file, line, f"event key {unknown[0]!r} unknown — use event, ago, properties")
    props = raw.get("properties", {})
    if not isinstance(props, dict):
        raise _error(file, line, f"event {raw['event']}: properties must be an object")
    return PlannedEvent(event_key(raw["event"]), parse_ago(raw.get("ago", "0m"), file, line), props)


def parse_ago(text: Any, file: str, line: int) -> int:
    """`ago` as microseconds: `<n>m|h|d|w` (`0m`: now)."""
    value = str(text).strip()
    unit = value[-1:]
    if unit not in US_PER or not value[:-1].isdigit():
        raise _error(file, line, f"ago {value!r} is not a duration — write e.g. 30m, 4h, 75d")
    return int(value[:-1]) * US_PER[unit]
