"""Match rates and error counts Google reports after an ingest (`requestStatus:retrieve`, §1.5).

Google processes an ingest after answering it: the match-rate bucket and the counts of records
it could not use come about 30 minutes to 24 hours later. Each acknowledged batch's request ids
are kept in a small file of the project (`.cohortsync/diagnostics/<destination>.json`), asked
about from `diagnostics_delay_seconds` after the ingest, then with a doubling pause until every
destination of every request is terminal; the figures then become the batch's stats
(`match_rate_low`, `match_rate_high`, `records_processed`, `error_records`, `error:<REASON>`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from cohortsync.destinations.base import AuthError, DeliveryError, PermanentError

TERMINAL = frozenset({"SUCCESS", "PARTIAL_SUCCESS", "FAILED"})
MAX_PAUSE = timedelta(hours=6)
GIVE_UP = timedelta(days=2)
"""Google keeps diagnostics for a while only; a batch still unknown after this is forgotten."""
_RANGE = re.compile(r"MATCH_RATE_RANGE_(\d+)_TO_(\d+)")
_BELOW = re.compile(r"MATCH_RATE_RANGE_LESS_THAN_(\d+)")


@dataclass
class Pending:
    """One batch whose diagnostics are not all in yet."""

    audience: str | None
    request_ids: list[str]
    sent_at: datetime
    due: datetime
    polls: int = 0
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class DiagnosticsLog:
    """The batches waiting for diagnostics, kept in one JSON file per destination."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(
        self,
        batch_id: str,
        audience: str | None,
        request_ids: Sequence[str],
        now: datetime,
        delay: float,
    ) -> None:
        """Remember a batch's request ids, to be asked about `delay` seconds from `now`."""
        if not request_ids:
            return
        pending = self.read()
        held = pending.get(batch_id)
        ids = sorted({*request_ids, *(held.request_ids if held else ())})
        pending[batch_id] = Pending(audience, ids, now, now + timedelta(seconds=delay))
        self.write(pending)

    def read(self) -> dict[str, Pending]:
        """Every pending batch (none if the file is missing or unreadable)."""
        try:
            raw = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        found: dict[str, Pending] = {}
        for batch_id, entry in (raw if isinstance(raw, dict) else {}).items():
            try:
                found[batch_id] = Pending(
                    entry.get("audience"),
                    [str(r) for r in entry["request_ids"]],
                    datetime.fromisoformat(entry["sent_at"]),
                    datetime.fromisoformat(entry["due"]),
                    int(entry.get("polls", 0)),
                    dict(entry.get("answers") or {}),
                )
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        return found

    def write(self, pending: Mapping[str, Pending]) -> None:
        """Replace the file atomically (a crash leaves the old or the new one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            batch_id: {
                "audience": p.audience,
                "request_ids": p.request_ids,
                "sent_at": p.sent_at.isoformat(),
                "due": p.due.isoformat(),
                "polls": p.polls,
                "answers": p.answers,
            }
            for batch_id, p in pending.items()
        }
        spare = self.path.with_suffix(".tmp")
        spare.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
        os.replace(spare, self.path)


def collect(
    log: DiagnosticsLog,
    retrieve: Callable[[str], Mapping[str, Any]],
    now: datetime,
    delay: float,
) -> dict[str, dict[str, int]]:
    """Ask about every due batch; the figures of batches now complete (batch id → stats).

    A transient failure leaves a batch for later; an auth failure stops asking for this run.
    """
    pending = log.read()
    complete: dict[str, dict[str, int]] = {}
    for batch_id, entry in sorted(pending.items(), key=lambda item: item[1].due):
        if entry.due > now:
            continue
        try:
            for request_id in entry.request_ids:
                if _terminal(entry.answers.get(request_id, [])):
                    continue
                try:
                    answer = retrieve(request_id)
                except PermanentError:
                    entry.answers[request_id] = [{"requestStatus": "FAILED"}]
                    continue
                statuses = answer.get("requestStatusPerDestination")
                listed = statuses if isinstance(statuses, list) else []
                entry.answers[request_id] = [s for s in listed if isinstance(s, dict)]
        except AuthError:
            break
        except DeliveryError:
            pass
        if all(_terminal(entry.answers.get(r, [])) for r in entry.request_ids):
            complete[batch_id] = figures(entry.answers.values())
            continue
        entry.polls += 1
        if now - entry.sent_at > GIVE_UP:
            complete[batch_id] = {"diagnostics_unavailable": 1}
            continue
        pause = timedelta(seconds=max(delay, 1.0) * 2 ** (entry.polls - 1))
        entry.due = now + min(pause, MAX_PAUSE)
    log.write({k: v for k, v in pending.items() if k not in complete})
    return complete


def figures(answers: Any) -> dict[str, int]:
    """A batch's stats from the per-destination statuses of its requests."""
    stats: dict[str, int] = {}
    lows: list[int] = []
    highs: list[int] = []
    for statuses in answers:
        for status in statuses:
            _ingestion(status, stats, lows, highs)
            if status.get("requestStatus") == "FAILED":
                stats["requests_failed"] = stats.get("requests_failed", 0) + 1
            errors = status.get("errorInfo", {}).get("errorCounts") or []
            for error in errors if isinstance(errors, list) else []:
                count = _int(error.get("recordCount"))
                reason = str(error.get("reason") or "UNKNOWN")
                stats["error_records"] = stats.get("error_records", 0) + count
                stats[f"error:{reason}"] = stats.get(f"error:{reason}", 0) + count
    if lows:
        stats["match_rate_low"] = min(lows)
        stats["match_rate_high"] = max(highs)
    return stats


def match_range(bucket: str) -> tuple[int, int] | None:
    """`MATCH_RATE_RANGE_41_TO_50` → (41, 50); `…_LESS_THAN_20` → (0, 19); else None."""
    found = _RANGE.fullmatch(bucket)
    if found:
        return int(found.group(1)), int(found.group(2))
    below = _BELOW.fullmatch(bucket)
    if below:
        return 0, int(below.group(1)) - 1
    return None


def _ingestion(
    status: Mapping[str, Any], stats: dict[str, int], lows: list[int], highs: list[int]
) -> None:
    for key in ("audienceMembersIngestionStatus", "audienceMembersRemovalStatus"):
        outer = status.get(key)
        inner = next(iter(outer.values()), None) if isinstance(outer, dict) and outer else None
        if not isinstance(inner, dict):
            continue
        _add(stats, "records_processed", _int(inner.get("recordCount")))
        bucket = inner.get("uploadMatchRateRange")
        found = match_range(str(bucket)) if bucket else None
        if found:
            lows.append(found[0])
            highs.append(found[1])
        elif bucket:
            stats["match_rate_not_eligible"] = 1
    events = status.get("eventsIngestionStatus")
    if isinstance(events, dict):
        _add(stats, "records_processed", _int(events.get("recordCount")))


def _add(stats: dict[str, int], key: str, count: int) -> None:
    stats[key] = stats.get(key, 0) + count


def _terminal(statuses: Sequence[Mapping[str, Any]]) -> bool:
    return bool(statuses) and all(s.get("requestStatus") in TERMINAL for s in statuses)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
