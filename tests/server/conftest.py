"""Fixtures for the HTTP ingest tests: httpx clients pointed at the live server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import WRITE_KEY, LiveServer


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    """A client authenticated the Segment way: Basic auth, write key as user, empty password."""
    with httpx.Client(base_url=live_server.url, auth=(WRITE_KEY, ""), timeout=30) as opened:
        yield opened


@pytest.fixture
def anonymous_client(live_server: LiveServer) -> Iterator[httpx.Client]:
    """A client that sends no credentials of its own."""
    with httpx.Client(base_url=live_server.url, timeout=30) as opened:
        yield opened
