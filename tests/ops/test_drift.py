"""Drift: an audience renamed or edited in Meta's Ads Manager shows in `status` and `lint`,
read back through the Graph API (the contract fake)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cohortsync.cli import app
from cohortsync.engine import Engine
from tests.conftest import PROJECT_YAML
from tests.fakes.meta import MetaFake

AUDIENCE = "cio_cart_1d"


def project_yaml(fake: MetaFake, token: str | None = None) -> str:
    return (
        PROJECT_YAML
        + f"""\
segments:
  cart_1d: {{event: added_to_cart, within: 1d}}
audiences:
  {AUDIENCE}:
    segment: cart_1d
    refresh: realtime
    identifiers: [email]
    destinations: [meta_ads]
    owner: paid@shop.example
    description: Carted in the last day.
  cio_unsynced:
    segment: cart_1d
    identifiers: [email]
    destinations: [meta_ads]
    owner: paid@shop.example
    description: Never synced, so never read back.
destinations:
  meta_ads:
    type: meta_custom_audience
    ad_account_id: act_{fake.ad_account_id}
    access_token: {token or fake.token}
    api_url: {fake.base_url}
lint:
  severity: {{CS101: off, CS110: off}}
"""
    )


def messages() -> Iterator[dict[str, Any]]:
    at = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    for n in range(5):
        base = {"anonymousId": f"d{n}", "timestamp": at}
        yield {**base, "type": "identify", "messageId": f"d-i{n}",
               "traits": {"email": f"drift{n}@example.com"}}  # fmt: skip
        yield {**base, "type": "track", "messageId": f"d-t{n}", "event": "added_to_cart"}


@pytest.fixture
def synced(tmp_path: Path, meta_fake: MetaFake) -> Path:
    """A project whose one audience was synced to the fake (the other never was)."""
    (tmp_path / "cohortsync.yml").write_text(project_yaml(meta_fake), encoding="utf-8")
    with Engine.open(tmp_path) as engine, httpx.Client() as http:
        engine.ingest_messages(messages())
        engine.compute()
        engine.sync(audience=AUDIENCE, http=http)
    assert AUDIENCE in meta_fake.audiences()
    return tmp_path


def status(project: Path) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["status", "--project", str(project), "--json"])
    assert result.exit_code == 0, result.stdout
    return dict(json.loads(result.stdout))


def lint_codes(project: Path) -> dict[str, str]:
    result = CliRunner().invoke(app, ["lint", "--project", str(project), "--format", "json"])
    return {f["code"]: f["message"] for f in json.loads(result.stdout)["findings"]}


def test_an_untouched_audience_shows_no_drift(synced: Path, meta_fake: MetaFake) -> None:
    drift = status(synced)["drift"]
    (asked,) = meta_fake.log.find("fields=id,name,description")
    assert asked.method == "GET" and asked.path.endswith("/customaudiences")
    assert ("access_token", meta_fake.token) in asked.params
    assert drift == [
        {"destination": "meta_ads", "audience": AUDIENCE, "problem": None,
         "platform_name": AUDIENCE, "error": None}
    ]  # fmt: skip
    assert "CS113" not in lint_codes(synced)
    picture = CliRunner().invoke(app, ["status", "--project", str(synced), "--wide"]).stdout
    assert "as cohortsync set it" in picture


def test_a_rename_on_the_platform_is_drift(synced: Path, meta_fake: MetaFake) -> None:
    meta_fake.edit_audience(AUDIENCE, new_name="Cart 1d (do not touch)")
    (entry,) = status(synced)["drift"]
    assert entry["problem"] == "renamed on Meta to 'Cart 1d (do not touch)'"
    assert entry["platform_name"] == "Cart 1d (do not touch)"
    found = lint_codes(synced)
    assert found["CS113"] == f"{AUDIENCE} on meta_ads: renamed on Meta to 'Cart 1d (do not touch)'"
    picture = CliRunner().invoke(app, ["status", "--project", str(synced), "--wide"]).stdout
    assert "drift: renamed on Meta" in " ".join(picture.split())


def test_an_edited_description_is_drift(synced: Path, meta_fake: MetaFake) -> None:
    meta_fake.edit_audience(AUDIENCE, description="Q3 retargeting")
    (entry,) = status(synced)["drift"]
    assert entry["problem"] == "description edited on Meta to 'Q3 retargeting'"
    assert "description edited on Meta" in lint_codes(synced)["CS113"]


def test_renamed_and_edited_reads_as_not_found(synced: Path, meta_fake: MetaFake) -> None:
    meta_fake.edit_audience(AUDIENCE, new_name="Old carts", description="whatever")
    (entry,) = status(synced)["drift"]
    assert entry["problem"].startswith(f"no audience there is named {AUDIENCE}")


def test_a_refused_read_back_is_reported_not_raised(synced: Path, meta_fake: MetaFake) -> None:
    (synced / "cohortsync.yml").write_text(
        project_yaml(meta_fake, token="EAAexpired"), encoding="utf-8"
    )
    (entry,) = status(synced)["drift"]
    assert entry["problem"] is None and "access token" in entry["error"].lower()
    result = CliRunner().invoke(app, ["lint", "--project", str(synced), "--format", "json"])
    report = json.loads(result.stdout)
    assert "CS113" not in {f["code"] for f in report["findings"]}
    assert any("could not read cio_cart_1d back" in note for note in report["notes"])
    assert "EAAexpired" not in result.stdout


def test_a_dry_run_destination_is_never_read_back(synced: Path, meta_fake: MetaFake) -> None:
    meta_fake.edit_audience(AUDIENCE, new_name="Renamed")
    path = synced / "cohortsync.yml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("    api_url:", "    dry_run: true\n    api_url:"), "utf-8")
    before = len(meta_fake.log.snapshot())
    assert status(synced)["drift"] == []
    assert "CS113" not in lint_codes(synced)
    assert len(meta_fake.log.snapshot()) == before  # Meta was not asked
