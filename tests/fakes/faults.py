"""A scriptable fault injector shared by every fake (reliability.md §4.3–4.5).

A test scripts what the next requests get instead of a normal answer:

- `fail(status, times=N | seconds=S, retry_after=…, body=…)`: an error for N requests or for S
  seconds (an outage, a throttle with `Retry-After`);
- `timeout(times=N, delay=S)`: the answer is held back longer than the client waits; with
  `processed=True` the request is handled first, so only the acknowledgement is lost;
- `script([500, 200, 429, 400, …])`: one status per attempt, consumed in order, like
  rudder-server's `TestEventOrderGuarantee`; a 2xx entry lets that attempt through untouched.

Faults are applied before the fake validates anything, in the order they were scripted, and are
safe to script from the test thread while the server thread consumes them.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

Renderer = Callable[[int], Mapping[str, Any]]
RELEASE_POLL = 0.02


def plain_error(status: int) -> Mapping[str, Any]:
    """The default body of a faulted answer when a fake does not supply its own shape."""
    return {"error": f"injected fault: HTTP {status}"}


@dataclass(frozen=True)
class Fault:
    """What one request gets instead of the fake's normal handling."""

    kind: str
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    processed: bool = False


@dataclass
class _Rule:
    """One scripted fault and how long it lasts (a count, a deadline or a status list)."""

    fault: Fault | None
    times: int | None = None
    until: float | None = None
    statuses: list[Fault | None] = field(default_factory=list)
    path: str | None = None
    method: str | None = None

    def matches(self, method: str, path: str) -> bool:
        """Whether this rule applies to a request (optional path substring and method)."""
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or self.path in path

    def live(self, now: float) -> bool:
        """Whether the rule still has something to serve."""
        if self.until is not None:
            return now < self.until
        if self.fault is None:
            return bool(self.statuses)
        return self.times is None or self.times > 0

    def consume(self) -> Fault | None:
        """The fault for this attempt (None lets it through), counting it down."""
        if self.fault is None:
            return self.statuses.pop(0)
        if self.times is not None:
            self.times -= 1
        return self.fault


class Faults:
    """The fault script of one fake: thread-safe, consumed one request at a time."""

    def __init__(self, render: Renderer = plain_error) -> None:
        self._render = render
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.fired = 0

    def fail(
        self,
        status: int = 500,
        *,
        times: int | None = None,
        seconds: float | None = None,
        retry_after: float | str | None = None,
        body: bytes | str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer `status` to the next `times` requests, or to every request for `seconds`."""
        if times is not None and seconds is not None:
            raise ValueError("give either times= or seconds=, not both")
        fault = self._fault("fail", status, body, headers, retry_after)
        if seconds is not None:
            until = time.monotonic() + seconds
            self._add(_Rule(fault, until=until, path=path, method=method))
        else:
            self._add(_Rule(fault, times=1 if times is None else times, path=path, method=method))

    def timeout(
        self,
        *,
        times: int = 1,
        delay: float = 2.0,
        processed: bool = False,
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        """Hold the answer of the next `times` requests for `delay` seconds, then send a 504.

        With `processed=True` the request is handled normally first and its real answer is
        what arrives late: the state changed but the client never heard it did.
        """
        fault = Fault("timeout", 504, self._body(504, None), delay=delay, processed=processed)
        self._add(_Rule(fault, times=times, path=path, method=method))

    def script(
        self,
        statuses: Iterable[int],
        *,
        retry_after: float | str | None = None,
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        """One status per attempt, in order; 2xx entries let the attempt reach the fake."""
        steps: list[Fault | None] = [
            None if 200 <= status < 300 else self._fault("script", status, None, None, retry_after)
            for status in statuses
        ]
        self._add(_Rule(None, statuses=steps, path=path, method=method))

    def take(self, method: str, path: str) -> Fault | None:
        """The fault for this request, if any script applies to it (called by the server)."""
        now = time.monotonic()
        with self._lock:
            self._rules = [rule for rule in self._rules if rule.live(now)]
            for rule in self._rules:
                if rule.matches(method, path):
                    fault = rule.consume()
                    if fault is not None:
                        self.fired += 1
                    return fault
        return None

    @property
    def pending(self) -> bool:
        """Whether any scripted fault is still waiting to fire."""
        now = time.monotonic()
        with self._lock:
            return any(rule.live(now) for rule in self._rules)

    def clear(self) -> None:
        """Forget every scripted fault; later requests are handled normally."""
        with self._lock:
            self._rules.clear()

    def release(self) -> None:
        """Cut every held-back answer short (used when the fake shuts down)."""
        self._released.set()

    async def hold(self, delay: float) -> None:
        """Sleep `delay` seconds inside the server, waking early if the fake is released."""
        deadline = time.monotonic() + delay
        while not self._released.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(RELEASE_POLL, left))

    def _add(self, rule: _Rule) -> None:
        """Append a rule to the script."""
        with self._lock:
            self._rules.append(rule)

    def _fault(
        self,
        kind: str,
        status: int,
        body: bytes | str | Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        retry_after: float | str | None,
    ) -> Fault:
        """Build a fault answer: headers lower-cased, Retry-After in whole seconds."""
        pairs = [(name.lower(), value) for name, value in (headers or {}).items()]
        if retry_after is not None:
            value = retry_after if isinstance(retry_after, str) else str(math.ceil(retry_after))
            pairs.append(("retry-after", value))
        return Fault(kind, status, self._body(status, body), tuple(pairs))

    def _body(self, status: int, body: bytes | str | Mapping[str, Any] | None) -> bytes:
        """The fault's body as bytes; the fake's own error shape when none is given."""
        if body is None:
            return orjson.dumps(self._render(status))
        if isinstance(body, bytes):
            return body
        if isinstance(body, str):
            return body.encode("utf-8")
        return orjson.dumps(body)
