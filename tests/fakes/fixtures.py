"""Pytest fixtures serving the fakes: each test gets its own fake on its own loopback port.

Loaded for the whole suite by `pytest_plugins` in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.google_data_manager import GoogleDataManagerFake
from tests.fakes.meta import MetaFake
from tests.fakes.segment import SegmentFake
from tests.fakes.tiktok import TiktokFake
from tests.fakes.webhook import WebhookFake


@pytest.fixture
def meta_fake() -> Iterator[MetaFake]:
    """A running Graph API fake: `.url`, `.token`, `.ad_account_id`, `.pixel_id`, state, faults."""
    with MetaFake().serving() as fake:
        yield fake


@pytest.fixture
def webhook_fake() -> Iterator[WebhookFake]:
    """A running Standard Webhooks receiver: `.url`, `.secret` (`whsec_…`), state, faults."""
    with WebhookFake().serving() as fake:
        yield fake


@pytest.fixture
def segment_fake() -> Iterator[SegmentFake]:
    """A running Segment `/v1/batch`: `.url`, `.messages` (once per messageId), faults."""
    with SegmentFake().serving() as fake:
        yield fake


@pytest.fixture
def google_fake() -> Iterator[GoogleDataManagerFake]:
    """A running Data Manager API fake: `.url`, `.token_url`, OAuth client, state, faults."""
    with GoogleDataManagerFake().serving() as fake:
        yield fake


@pytest.fixture
def tiktok_fake() -> Iterator[TiktokFake]:
    """A running TikTok Business API fake: `.url`, `.token`, `.advertiser_id`, `.pixel_code`."""
    with TiktokFake().serving() as fake:
        yield fake
