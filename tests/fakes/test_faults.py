"""The fault script shared by the fakes fires in order, the scripted number of times."""

from __future__ import annotations

import pytest

from tests.fakes.faults import Faults


def statuses(faults: Faults, n: int, path: str = "/x", method: str = "POST") -> list[int | None]:
    """What the next `n` requests get: a fault status, or None when let through."""
    answers = [faults.take(method, path) for _ in range(n)]
    return [None if answer is None else answer.status for answer in answers]


def test_rules_fire_in_the_order_they_were_scripted() -> None:
    faults = Faults()
    faults.fail(503, times=2)
    faults.fail(429, times=1, retry_after=2.5)
    answers = [faults.take("GET", "/x") for _ in range(4)]
    assert [a.status if a else None for a in answers] == [503, 503, 429, None]
    assert answers[2] is not None
    assert ("retry-after", "3") in answers[2].headers
    assert faults.fired == 3


def test_a_script_lets_2xx_attempts_through_and_then_ends() -> None:
    faults = Faults()
    faults.script([500, 200, 400])
    assert statuses(faults, 4) == [500, None, 400, None]
    assert not faults.pending


def test_path_and_method_filters_leave_other_requests_alone() -> None:
    faults = Faults()
    faults.fail(500, times=1, path="/users", method="DELETE")
    assert statuses(faults, 1, path="/users", method="POST") == [None]
    assert statuses(faults, 1, path="/events", method="DELETE") == [None]
    assert statuses(faults, 2, path="/v25.0/1/users", method="DELETE") == [500, None]


def test_a_window_in_seconds_lasts_until_cleared_or_over() -> None:
    faults = Faults()
    faults.fail(503, seconds=600)
    assert statuses(faults, 3) == [503, 503, 503]
    faults.clear()
    assert statuses(faults, 1) == [None]


def test_times_and_seconds_together_are_refused() -> None:
    with pytest.raises(ValueError, match="either times= or seconds="):
        Faults().fail(500, times=1, seconds=1)


def test_a_fake_supplies_its_own_error_body() -> None:
    faults = Faults(render=lambda status: {"error": {"code": 2, "status": status}})
    faults.fail(502)
    fault = faults.take("GET", "/")
    assert fault is not None
    assert fault.body == b'{"error":{"code":2,"status":502}}'
