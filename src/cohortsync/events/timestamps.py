"""ISO-8601 parsing to UTC microseconds, and Segment's clock-skew correction."""

from __future__ import annotations

from datetime import UTC, datetime

from cohortsync.moments import now_micros, to_micros

__all__ = [
    "MAX_US",
    "MIN_US",
    "TimestampError",
    "check_range",
    "correct_skew",
    "now_micros",
    "parse_timestamp",
    "to_micros",
]

MIN_US = 0  # 1970-01-01
MAX_US = to_micros(datetime(2200, 1, 1, tzinfo=UTC))


class TimestampError(ValueError):
    """A timestamp that is not ISO-8601 or lies outside 1970–2200."""


def parse_timestamp(value: object) -> int:
    """Parse an ISO-8601 string (naive means UTC) to microseconds since the epoch."""
    if not isinstance(value, str):
        raise TimestampError(f"must be an ISO-8601 string, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise TimestampError("is not ISO-8601: write e.g. 2026-05-01T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    micros = to_micros(moment)
    check_range(micros)
    return micros


def check_range(micros: int) -> None:
    """Refuse instants before 1970 or after 2200: they are client bugs, not events."""
    if not MIN_US <= micros <= MAX_US:
        raise TimestampError("is outside 1970-01-01..2200-01-01")


def correct_skew(original_us: int, sent_at_us: int | None, received_at_us: int) -> int:
    """Segment's correction: shift the client's time by the client/server clock difference."""
    if sent_at_us is None:
        return original_us
    corrected = received_at_us - (sent_at_us - original_us)
    check_range(corrected)
    return corrected
