"""Refresh cadences of audiences: `realtime`, `15m`, `1h`, `1d`, or a 5-field cron expression."""

from __future__ import annotations

from datetime import UTC, datetime

from cronsim import CronSim, CronSimError

CADENCES = ("realtime", "15m", "1h", "1d")


def valid_refresh(text: str) -> bool:
    """Whether `text` is a known cadence or a valid 5-field cron expression."""
    return text in CADENCES or valid_cron(text)


def valid_cron(text: str) -> bool:
    """A standard 5-field cron expression (cronsim also reads a 6th, seconds, field: refused)."""
    if len(text.split()) != 5:
        return False
    try:
        CronSim(text, datetime.now(UTC))
    except CronSimError:
        return False
    return True
