"""What every fake shares: the capture log, the fault script, a settable clock, and serving.

A fake is built unstarted; `with fake.serving():` runs it with real uvicorn and sets
`fake.base_url`; `fake.url` is where a client points (the base URL plus the fake's endpoint).
Fault methods (`fail`, `timeout`, `script`) are the ones of `faults.Faults`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Self

from starlette.types import ASGIApp

from tests.fakes.capture import CaptureLog
from tests.fakes.faults import Faults, Renderer, plain_error
from tests.fakes.harness import Harness
from tests.fakes.serve import running


class FakeServer:
    """A fake external API: its app behind the capture-and-fault harness, and its clock."""

    endpoint = ""

    def __init__(self, app: ASGIApp, render: Renderer = plain_error) -> None:
        self.base_url = ""
        self.faults = Faults(render)
        self.log = CaptureLog()
        self.app = Harness(app, self.faults, self.log)
        self.fail = self.faults.fail
        self.timeout = self.faults.timeout
        self.script = self.faults.script
        self._clock: datetime | None = None

    @property
    def url(self) -> str:
        """The URL a client is configured with (empty until the fake is serving)."""
        return self.base_url + self.endpoint if self.base_url else ""

    @property
    def now(self) -> datetime:
        """The fake's current time: real UTC time unless a test set it."""
        return self._clock if self._clock is not None else datetime.now(UTC)

    @now.setter
    def now(self, value: datetime | None) -> None:
        """Freeze the fake's clock at `value` (naive means UTC); None goes back to real time."""
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        self._clock = value

    @contextmanager
    def serving(self) -> Iterator[Self]:
        """Run the fake on a free loopback port for the duration of the block."""
        with running(self.app) as url:
            self.base_url = url
            try:
                yield self
            finally:
                self.faults.release()
