"""`cohortsync lint`: the classic retention mistakes, each under a stable code, with the
measured figure and the fix.

Static rules read the project file; measured rules read the current memberships of the last
compute and the members' identifiers; drift is what destinations that read back report.
Severities come from the code's default, `lint.severity` in the project file (`error`,
`warning` or `off`) and per audience `lint: {ignore: [CODE]}`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from cohortsync.config.loader import LoadedProject, display_path
from cohortsync.errors import ConfigError
from cohortsync.moments import to_datetime
from cohortsync.ops import lint_measured, lint_rules
from cohortsync.ops.drift import Drift
from cohortsync.ops.lint_codes import RULES, Finding, Reported, Severity
from cohortsync.ops.lint_context import (
    LintContext,
    Measures,
    measured_kinds,
    places_of,
    purchase_events,
)
from cohortsync.segments.ast import SegmentProject
from cohortsync.store.base import Store
from cohortsync.sync.configure import SyncSetup

STATIC: tuple[Callable[[LintContext], Iterable[Finding]], ...] = (
    lint_rules.retargeting_without_suppression,
    lint_rules.suppression_not_realtime,
    lint_rules.too_many_audiences,
    lint_rules.holdout_not_measurable,
    lint_rules.identifier_mismatch,
    lint_rules.undocumented,
)
MEASURED: tuple[Callable[[LintContext, Measures], Iterable[Finding]], ...] = (
    lint_measured.under_minimum,
    lint_measured.holdout_leak,
    lint_measured.low_coverage,
    lint_measured.offer_conflict,
    lint_measured.near_duplicates,
    lint_measured.anonymous_share,
)


@dataclass(frozen=True)
class LintReport:
    """What lint found, ordered by code then audience; `measured` says whether measured rules
    ran (they need a compute), `as_of` the instant of the memberships they read."""

    findings: list[Reported]
    measured: bool
    as_of: datetime | None
    notes: list[str]

    @property
    def errors(self) -> int:
        """Findings reported as errors (lint exits 1 when there is any)."""
        return sum(1 for r in self.findings if r.severity == "error")

    @property
    def warnings(self) -> int:
        """Findings reported as warnings."""
        return sum(1 for r in self.findings if r.severity == "warning")


def lint_project(
    loaded: LoadedProject,
    segments: SegmentProject,
    setup: SyncSetup,
    store: Store,
    drifts: Sequence[Drift] = (),
) -> LintReport:
    """Run every rule over the project, its store and the drift read back."""
    project = loaded.project
    _check_codes(loaded, segments)
    as_of_us = store.last_compute_as_of()
    measures = None
    if as_of_us is not None:
        kinds = measured_kinds(segments, project.identity.primary, project.identity.secondary)
        measures = Measures(store, segments, kinds)
    context = LintContext(
        segments,
        project.lint,
        project.identity.primary,
        purchase_events([rule.event for rule in project.conversions]),
        places_of(setup),
        setup.accepts(),
        measures,
    )
    found: list[Finding] = [f for rule in STATIC for f in rule(context)]
    notes: list[str] = []
    if measures is not None:
        found += [f for rule in MEASURED for f in rule(context, measures)]
    else:
        notes.append(
            "sizes, overlaps and identifier coverage were not measured: nothing was computed "
            "yet (run cohortsync compute)"
        )
    found += list(drift_findings(drifts))
    notes += [
        f"{d.destination}: could not read {d.audience} back: {d.error}" for d in drifts if d.error
    ]
    reported = list(_severities(loaded, segments, found))
    reported.sort(
        key=lambda r: (r.finding.code, r.finding.audience or "", r.finding.destination or "")
    )
    as_of = to_datetime(as_of_us) if as_of_us is not None else None
    return LintReport(reported, measures is not None, as_of, notes)


def drift_findings(drifts: Iterable[Drift]) -> Iterator[Finding]:
    """CS113: an audience renamed or edited on the platform."""
    for drift in drifts:
        if drift.problem is None:
            continue
        yield Finding(
            "CS113",
            drift.audience,
            f"{drift.audience} on {drift.destination}: {drift.problem}",
            f"restore the name {drift.audience} and the description cohortsync set, on the "
            "platform: cohortsync finds the audience by its exact name, and its next sync "
            "would otherwise create a new one",
            destination=drift.destination,
        )


def _severities(
    loaded: LoadedProject, segments: SegmentProject, found: Iterable[Finding]
) -> Iterator[Reported]:
    """Each finding with its severity; codes set `off` and audience-ignored codes dropped."""
    configured = loaded.project.lint.severity
    for finding in found:
        audience = segments.audiences.get(finding.audience or "")
        if audience is not None and finding.code in audience.lint_ignore:
            continue
        level = configured.get(finding.code, RULES[finding.code].severity)
        if level == "off":
            continue
        severity: Severity = "error" if level == "error" else "warning"
        yield Reported(finding, severity)


def _check_codes(loaded: LoadedProject, segments: SegmentProject) -> None:
    """An unknown code under `lint.severity` or an audience's `lint: {ignore:}` is a
    `cohortsync.yml:LINE` error naming the known codes."""
    known = ", ".join(RULES)
    display = display_path(loaded.file)
    for code in loaded.project.lint.severity:
        if code not in RULES:
            raise ConfigError(
                f"lint.severity names unknown code {code!r}: use one of {known}",
                display,
                loaded.line_of("lint", "severity", code),
            )
    for audience in segments.audiences.values():
        for code in audience.lint_ignore:
            if code not in RULES:
                raise ConfigError(
                    f"audience {audience.name!r} ignores unknown lint code {code!r}: use one of "
                    f"{known}",
                    display,
                    loaded.line_of("audiences", audience.name, "lint", "ignore"),
                )
