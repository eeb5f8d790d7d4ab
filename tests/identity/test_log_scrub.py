"""Log lines never carry an email, a phone number or a secret, tracebacks included."""

from __future__ import annotations

import logging

import httpx
import pytest

import cohortsync.destinations.http  # noqa: F401  (installs the httpx filter)
from cohortsync.identity.log_scrub import scrubbed_logger


def test_a_worker_exception_with_identifiers_is_logged_scrubbed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = scrubbed_logger("cohortsync.test")
    with caplog.at_level(logging.INFO, logger="cohortsync.test"):
        try:
            raise ValueError("no profile for Jane.Doe+promo@Example.com or (650) 555-1212")
        except ValueError:
            log.exception("round failed for %s", "jane.doe@example.com")
    text = caplog.text
    assert "round failed for <email>" in text
    assert "ValueError: no profile for <email> or (<phone>" in text
    assert "example.com" not in text.lower() and "555-1212" not in text


def test_httpx_request_lines_mask_the_access_token(caplog: pytest.LogCaptureFixture) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={})

    with (
        caplog.at_level(logging.INFO, logger="httpx"),
        httpx.Client(transport=httpx.MockTransport(answer)) as client,
    ):
        client.post(
            "https://graph.facebook.com/v23.0/act_1/customaudiences",
            params={"access_token": "EAAB-secret-token", "name": "cio_lapsed_75d"},
        )
    assert "access_token=***" in caplog.text
    assert "EAAB-secret-token" not in caplog.text
    assert "cio_lapsed_75d" in caplog.text


def test_a_logger_gets_the_filter_once() -> None:
    log = scrubbed_logger("cohortsync.twice")
    assert scrubbed_logger("cohortsync.twice") is log
    assert len(log.filters) == 1
