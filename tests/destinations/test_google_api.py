"""Data Manager calls without a server: error bodies mapped to error classes, the client-side
quota, and bad records isolated by splitting requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import orjson
import pytest

from cohortsync.destinations.base import AuthError, PermanentError, TransientError
from cohortsync.destinations.google_api import RecordError, RequestLimiter, google_error
from cohortsync.destinations.google_isolate import deliver


def status(code: int, reason: str | None = None, field: str | None = None) -> bytes:
    details: list[dict[str, Any]] = []
    if reason:
        details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason})
    if field:
        violation = {"field": field, "description": "bad"}
        details.append(
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}
        )
    body = {
        "error": {"code": code, "status": "X", "message": "for ann@example.com", "details": details}
    }
    return orjson.dumps(body)


def test_errors_map_to_their_classes_and_name_googles_reason() -> None:
    throttled = httpx.Response(429, headers={"retry-after": "12"})
    error = google_error(429, status(429, "RATE_LIMIT_EXCEEDED"), "w", throttled)
    assert isinstance(error, TransientError) and error.retry_after == 12
    assert isinstance(google_error(503, b"down", "w"), TransientError)
    assert isinstance(google_error(401, status(401), "w"), AuthError)
    assert isinstance(google_error(403, status(403, "PERMISSION_DENIED"), "w"), AuthError)
    record = google_error(
        400, status(400, "INVALID_SHA256_FORMAT", "audience_members[7].user_data"), "w"
    )
    assert isinstance(record, RecordError) and record.index == 7
    assert "INVALID_SHA256_FORMAT" in str(record) and "ann@example.com" not in str(record)
    unplaced = google_error(400, status(400, "INVALID_HEX_ENCODING"), "w")
    assert isinstance(unplaced, RecordError) and unplaced.index is None
    whole = google_error(400, status(400, "TERMS_AND_CONDITIONS_NOT_SIGNED", "terms"), "w")
    assert type(whole) is PermanentError


def test_the_limiter_waits_for_a_slot_counted_from_when_requests_ended() -> None:
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    limiter = RequestLimiter(2, window=60.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        slot = limiter.acquire()
        now[0] += 1.0  # the request takes a second
        limiter.finish(slot)
    assert waits == [59.0, 59.0]
    assert limiter.waited == 118.0


def sender(bad: set[int], log: list[int]) -> Any:
    def send(chunk: Sequence[int]) -> dict[str, Any]:
        log.append(len(chunk))
        for position, item in enumerate(chunk):
            if item in bad:
                raise RecordError(f"INVALID at audience_members[{position}]", "INVALID", position)
        return {"requestId": f"r{len(log)}"}

    return send


@pytest.mark.parametrize("bad", [0, 500, 637, 999])
def test_one_bad_record_in_1000_takes_at_most_21_requests(bad: int) -> None:
    log: list[int] = []
    done = deliver(list(range(1_000)), lambda i: i, sender({bad}, log), 10_000)
    assert set(done.rejected) == {bad} and len(done.delivered) == 999
    assert done.requests == len(log) <= 1 + 2 * 10  # the whole, then two halves per level


def test_two_bad_records_are_both_isolated_and_the_rest_delivered() -> None:
    log: list[int] = []
    done = deliver(list(range(64)), lambda i: i, sender({3, 40}, log), 30)
    assert set(done.rejected) == {3, 40}
    assert sorted(done.delivered) == [i for i in range(64) if i not in (3, 40)]
    assert max(log) == 30


def test_a_transient_failure_before_anything_was_acknowledged_fails_the_batch() -> None:
    def down(chunk: Sequence[int]) -> dict[str, Any]:
        raise TransientError("503")

    with pytest.raises(TransientError):
        deliver([1, 2, 3], lambda i: i, down, 10)
