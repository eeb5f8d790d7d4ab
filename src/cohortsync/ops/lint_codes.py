"""The lint codes: stable names, what each catches and its default severity, and a finding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]
ERROR: Severity = "error"
WARNING: Severity = "warning"


@dataclass(frozen=True)
class Rule:
    """A lint code: its default severity and what it catches, in a few words."""

    code: str
    severity: Severity
    title: str


RULES: dict[str, Rule] = {
    rule.code: rule
    for rule in (
        Rule("CS101", ERROR, "paid retargeting of an intent audience without purchase suppression"),
        Rule("CS102", ERROR, "purchase suppression on an ad platform that is not real time"),
        Rule("CS103", WARNING, "too many ad-platform audiences on one destination"),
        Rule("CS104", WARNING, "audience under the platform's usable minimum"),
        Rule("CS105", ERROR, "holdout members reach an ad platform through another audience"),
        Rule("CS106", ERROR, "holdout recorded nowhere it can be measured"),
        Rule("CS107", ERROR, "audience sent without the identifier its destination matches on"),
        Rule("CS108", WARNING, "primary-identifier coverage under the minimum"),
        Rule("CS109", ERROR, "offer conflict"),
        Rule("CS110", WARNING, "near-duplicate audiences on one destination"),
        Rule("CS111", WARNING, "audience without owner or description"),
        Rule("CS112", WARNING, "anonymous-only members above the allowed share"),
        Rule("CS113", WARNING, "renamed or edited on the platform (drift)"),
    )
}


@dataclass(frozen=True)
class Finding:
    """One mistake: its code, the audience (None for a destination-wide one), the destination
    when one is concerned, what is wrong with the measured figure, and the fix."""

    code: str
    audience: str | None
    message: str
    fix: str
    destination: str | None = None
    figure: float | None = None
    """The measured number the message quotes (a count or a share), when one was measured."""


@dataclass(frozen=True)
class Reported:
    """A finding with the severity the project gives its code."""

    finding: Finding
    severity: Severity
