"""Debian's Chromium driven by Playwright's Python package, for the browser tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # Other hosts do not resolve: the page can reach nothing but this machine. (Not page.route:
    # while Playwright intercepts, it answers CORS preflights itself, hiding the server's.)
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]  # fmt: skip


def browser_missing() -> str | None:
    """Why no browser test can run here (None: Chromium and Playwright are there)."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[dev]')"
    return None


def launched_chromium(missing: str | None) -> Iterator[Any]:
    """A launched browser for a fixture to yield; each test opens a fresh context. What is
    `missing` skips the test, or fails it under .ci/run (COHORTSYNC_BROWSER_REQUIRED)."""
    if missing is not None:
        if os.environ.get("COHORTSYNC_BROWSER_REQUIRED"):  # set by .ci/run, which installs all
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()
