"""A dry run counts what would be sent and, apart, what would be refused and why: in the table,
in `--json`, in its files and in `status`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner, Result

from cohortsync.cli import app
from cohortsync.engine import Engine
from tests.conftest import PROJECT_YAML
from tests.sync.conftest import person, stamp, track

CAPI_YAML = """\
segments:
  buyers: {event: order_completed, within: 7d}
audiences:
  cio_buyers: {segment: buyers, destinations: []}
destinations:
  meta_capi:
    type: meta_capi
    pixel_id: "1234567890"
    access_token: not-a-token
    dry_run: true
conversions:
  - {event: order_completed, as: Purchase, value: revenue, currency: USD, destinations: [meta_capi]}
"""
BROWSER = {
    "ip": "203.0.113.7",
    "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)",
    "page": {"url": "https://shop.example.com/checkout/thank-you"},
}
TOO_OLD = "too_old"
NO_PAGE = "website events need context.page.url and context.userAgent"


@pytest.fixture(autouse=True)
def _no_project_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHORTSYNC_PROJECT", raising=False)


def invoke(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "400"}).invoke(app, list(args), catch_exceptions=True)


def order(n: int, at: datetime, context: dict[str, Any] | None) -> dict[str, Any]:
    message = track(n, "order_completed", at, revenue=20.0, currency="USD")
    message["timestamp"] = stamp(at)
    if context is not None:
        message["context"] = context
    return message


@pytest.fixture
def orders(project_dir: Path) -> Iterator[Path]:
    """Three orders for Meta CAPI: one it takes, one too old, one without page URL."""
    (project_dir / "cohortsync.yml").write_text(PROJECT_YAML + CAPI_YAML, encoding="utf-8")
    now = datetime.now(UTC)
    with Engine.open(project_dir) as engine:
        engine.ingest_messages([person(n, now - timedelta(days=30)) for n in range(3)])
        engine.ingest_messages(
            [
                order(0, now - timedelta(hours=1), BROWSER),
                order(1, now - timedelta(days=10), BROWSER),
                order(2, now - timedelta(hours=2), None),
            ]
        )
    yield project_dir


def test_sync_json_counts_what_would_be_sent_apart_from_what_would_be_refused(
    orders: Path,
) -> None:
    result = invoke("sync", "--project", str(orders), "--json")
    assert result.exit_code == 0, result.output
    (capi,) = [r for r in json.loads(result.stdout)["routes"] if r["destination"] == "meta_capi"]
    assert capi["dry_run"] is True
    assert (capi["would_send"], capi["rejected"], capi["acknowledged"]) == (1, 2, 0)
    assert capi["reasons"] == {TOO_OLD: 1, NO_PAGE: 1}
    (written,) = (orders / ".cohortsync" / "dry-run" / "meta_capi").glob("*.json")
    request = orjson.loads(written.read_bytes())
    assert (request["would_send"], len(request["refused"])) == (1, 2)
    (sent,) = request["requests"]
    assert [e["event_source_url"] for e in sent["body"]["data"]] == [BROWSER["page"]["url"]]


def test_sync_table_and_status_show_both_counts(orders: Path) -> None:
    result = invoke("sync", "--project", str(orders))
    assert result.exit_code == 0, result.output
    assert "1 would send" in result.stdout
    assert f"refused: 1 {TOO_OLD}, 1 {NO_PAGE}" in result.stdout
    status = json.loads(invoke("status", "--project", str(orders), "--json").stdout)
    (capi,) = [r for r in status["routes"] if r["destination"] == "meta_capi"]
    assert capi["dry_run"] is True
    assert (capi["dry_run_written"], capi["failed"], capi["pending"]) == (1, 2, 0)
