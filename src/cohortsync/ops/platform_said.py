"""What an ad platform says back about an audience, as one short line for people to read."""

from __future__ import annotations

from cohortsync.store.outbox import PlatformReport

NOTHING = "—"
"""Shown where a platform never said anything (never 0: nothing was read)."""


def platform_said(report: PlatformReport) -> str:
    """`1,000–1,200 people (replace_in_progress), 3 invalid` (Meta), `match 61–70%, 2 invalid`
    (Google), or `—` when the platform never reported anything."""
    parts = []
    if report.size_low is not None and report.size_high is not None:
        if report.size_low < 0 or report.size_high < 0:
            size = "too few to show"
        elif report.size_low == report.size_high:
            size = f"{report.size_low:,} people"
        else:
            size = f"{report.size_low:,}–{report.size_high:,} people"
        status = report.operation_status
        parts.append(size if status in (None, "Normal") else f"{size} ({status})")
    elif report.operation_status not in (None, "Normal"):
        parts.append(str(report.operation_status))
    if report.match_rate_low is not None and report.match_rate_high is not None:
        parts.append(f"match {report.match_rate_low}–{report.match_rate_high}%")
    if report.invalid_entries is not None:
        parts.append(f"{report.invalid_entries:,} invalid")
    return ", ".join(parts) or NOTHING
