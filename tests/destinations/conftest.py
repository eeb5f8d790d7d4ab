"""Fixtures shared by the destination tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """A real HTTP client with a short timeout."""
    with httpx.Client(timeout=2.0) as client:
        yield client
