"""Every HTTP destination takes `base_url` (a proxy, a regional host, a fake): the requests it
would send go to that host, as written in a project file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cohortsync.config.loader import load_project, parse_segments
from cohortsync.destinations.base import (
    Batch,
    Change,
    Conversion,
    ConversionBatch,
    DestinationContext,
)
from cohortsync.destinations.registry import destination_class
from cohortsync.errors import ConfigError
from cohortsync.sync.configure import sync_setup

AT = datetime(2026, 6, 1, 12, tzinfo=UTC)
BASE = "http://proxy.internal:8443/egress"
PLATFORMS = {
    "meta": "https://graph.facebook.com",
    "google": "https://datamanager.googleapis.com",
    "tiktok": "https://business-api.tiktok.com",
    "segment": "https://api.segment.io",
}
GOOGLE = {
    "operating_account_id": "123-456-7890",
    "refresh_token": "r",
    "client_id": "c",
    "client_secret": "s",
}
CHANGES = Batch(
    "b1",
    "cio_cart_abandon_6h",
    (
        Change(
            1,
            "cio_cart_abandon_6h",
            "p1",
            "add",
            False,
            AT,
            {"email": "a@example.com", "user_id": "u1"},
        ),
    ),
)
CONVERSIONS = ConversionBatch(
    "c1",
    (
        Conversion(
            1,
            "m1",
            "Purchase",
            "order_completed",
            AT,
            "p1",
            {"email": "a@example.com", "user_id": "u1"},
            value=20.0,
            currency="USD",
            context={"page": {"url": "https://shop.example.com/thanks"}, "userAgent": "UA"},
        ),
    ),
)
CASES: list[tuple[str, dict[str, Any], Batch | ConversionBatch, str]] = [
    ("meta_custom_audience", {"ad_account_id": "act_1", "access_token": "t"}, CHANGES, "/v25.0/"),
    ("meta_capi", {"pixel_id": "1", "access_token": "t"}, CONVERSIONS, "/v25.0/1/events"),
    ("google_customer_match", {**GOOGLE, "accept_terms_of_service": True}, CHANGES, "/v1/"),
    ("google_conversions", {**GOOGLE, "conversion_action_id": "9"}, CONVERSIONS, "/v1/events"),
    ("tiktok_audience", {"advertiser_id": "7", "access_token": "t"}, CHANGES, "/open_api/v1.3/"),
    ("tiktok_events", {"pixel_code": "P", "access_token": "t"}, CONVERSIONS, "/open_api/v1.3/"),
    ("segment", {"write_key": "k"}, CHANGES, "/v1/batch"),
]


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


@pytest.mark.parametrize(("kind", "settings", "batch", "path"), CASES, ids=[c[0] for c in CASES])
def test_requests_go_to_the_configured_base_url(
    kind: str,
    settings: dict[str, Any],
    batch: Batch | ConversionBatch,
    path: str,
    tmp_path: Path,
    http: httpx.Client,
) -> None:
    cls = destination_class(kind)
    config = cls.config_model.model_validate({"type": kind, **settings, "base_url": BASE + "/"})
    destination = cls(config, DestinationContext(kind, tmp_path, http, lambda: AT))
    requests = destination.preview(batch).requests
    assert requests, destination.preview(batch).refused
    for request in requests:
        assert request["url"].startswith(BASE + path), request["url"]


@pytest.mark.parametrize(("kind", "settings", "batch", "path"), CASES, ids=[c[0] for c in CASES])
def test_without_base_url_requests_go_to_the_platform(
    kind: str,
    settings: dict[str, Any],
    batch: Batch | ConversionBatch,
    path: str,
    tmp_path: Path,
    http: httpx.Client,
) -> None:
    cls = destination_class(kind)
    config = cls.config_model.model_validate({"type": kind, **settings})
    destination = cls(config, DestinationContext(kind, tmp_path, http, lambda: AT))
    for request in destination.preview(batch).requests:
        assert request["url"].startswith(PLATFORMS[kind.partition("_")[0]] + path), request["url"]


def test_an_unknown_key_is_answered_with_base_url_among_the_allowed(tmp_path: Path) -> None:
    text = (
        "store: .cohortsync/store.duckdb\nsources: {web: {write_key: wk_test_0123456789}}\n"
        "segments: {anyone: {event: added_to_cart}}\naudiences: {}\ndestinations:\n"
        "  meta_ads: {type: meta_custom_audience, ad_account_id: act_1, access_token: t, "
        "base_url: 'http://127.0.0.1:1', api_root: x}\n"
    )
    (tmp_path / "cohortsync.yml").write_text(text, encoding="utf-8")
    loaded = load_project(tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key 'api_root'.*allowed here: .*base_url"):
        sync_setup(loaded, parse_segments(loaded))
