"""The example project's Google and TikTok destinations are dry runs: after a small demo, their
folders hold the requests each platform would get, which the platform's contract fake accepts,
counted as the sync tallied them, and no raw email or phone is in any dry-run file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from cohortsync.config.scaffold import scaffold_project
from cohortsync.engine import Engine
from cohortsync.render import demo_table
from cohortsync.store.outbox import RouteStatus
from cohortsync.sync.run import SyncReport
from tests.fakes import tiktok_rules
from tests.fakes.google_requests import (
    EVENTS_FIELDS,
    INGEST_FIELDS,
    REMOVE_FIELDS,
    KnownPeople,
    check_consent,
    check_encoding,
    check_fields,
    check_terms,
    parse_destinations,
    parse_events,
    parse_members,
)

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
GOOGLE = "https://datamanager.googleapis.com/v1/"
TIKTOK = "https://business-api.tiktok.com/open_api/v1.3/"
ADVERTISER_ID = "7012345678901234567"
PIXEL_CODE = "CDEMOPIXEL0000000000"
AUDIENCE_DESTINATIONS = ("google_ads", "tiktok_ads")
CONVERSION_DESTINATIONS = ("google_conversions", "tiktok_events")
HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Demo:
    """A synced demo: its report, its status, its people's raw identifiers, its folder."""

    report: SyncReport
    status: list[RouteStatus]
    dry: set[str]
    emails: set[str]
    phones: set[str]
    folder: Path
    table: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """The example project on 400 shoppers, computed and synced (every ad platform a dry run)."""
    folder = tmp_path_factory.mktemp("demo")
    scaffold_project(folder)
    with Engine.open(folder) as engine:
        engine.load_demo(400, seed=7, now=NOW)
        computed = engine.compute(NOW)
        report = engine.sync(clock=lambda: NOW)
        status = engine.sync_status()
        dry = {n for n, c in engine.sync_setup.configs.items() if c.dry_run}
        rows = engine.store.query(
            "SELECT kind, value FROM identities WHERE kind IN ('email', 'phone')", ()
        )
    console = Console(width=240, record=True, color_system=None)
    console.print(demo_table(computed, status, dry, report.delivery))
    emails = {str(v) for k, v in rows if k == "email"}
    phones = {str(v) for k, v in rows if k == "phone"}
    assert report.dry_run_folder is not None
    yield Demo(report, status, dry, emails, phones, report.dry_run_folder, console.export_text())


def written(folder: Path) -> list[dict[str, Any]]:
    """Every file one destination's dry run wrote."""
    return [orjson.loads(p.read_bytes()) for p in sorted(folder.glob("*.json"))]


def orders(demo: Demo) -> int:
    """Conversions planned for each stream: what the warehouse, sent for real, received."""
    return demo.report.delivery.tallies[("warehouse", None)].acknowledged


def people(demo: Demo) -> KnownPeople:
    """The demo's people as the Google fake knows them: badly normalised hashes are refused."""
    known = KnownPeople()
    known.register([{"email": e} for e in demo.emails] + [{"phone": p} for p in demo.phones])
    return known


def test_google_customer_match_requests_are_accepted_by_the_data_manager_fake(
    demo: Demo,
) -> None:
    known = people(demo)
    members = 0
    for dry in written(demo.folder / "google_ads"):
        found = 0
        for request in dry["requests"]:
            body = request["body"]
            assert request["method"] == "POST"
            assert "Authorization" not in request["headers"]  # never written
            if request["url"] == GOOGLE + "audienceMembers:ingest":
                check_fields(body, INGEST_FIELDS)
                check_terms(body)
                check_consent(body.get("consent"), "consent")
            else:
                assert request["url"] == GOOGLE + "audienceMembers:remove"
                check_fields(body, REMOVE_FIELDS)
            (target,) = parse_destinations(body)
            assert target.account_id == "1234567890"
            keys = parse_members(body, check_encoding(body), known)
            # every hash is one of a demo person's, in Google's normal form
            assert all(key.split(":", 1)[-1] in known.right for m in keys for key in m), keys
            found += len(keys)
        assert found == dry["would_send"] == dry["records"] - len(dry["refused"])
        members += found
    tallied = [t for (d, _), t in demo.report.delivery.tallies.items() if d == "google_ads"]
    assert members > 0 and all(t.dry_run for t in tallied)
    assert members == sum(t.would_send for t in tallied)


def test_google_conversions_requests_are_accepted_by_the_data_manager_fake(demo: Demo) -> None:
    known = people(demo)
    sent = 0
    for dry in written(demo.folder / "google_conversions"):
        for request in dry["requests"]:
            assert request["url"] == GOOGLE + "events:ingest"
            body = request["body"]
            check_fields(body, EVENTS_FIELDS)
            (target,) = parse_destinations(body)
            assert target.product_destination_id == "123456789"
            events = parse_events(body, known, NOW)
            assert len(events) <= 2_000
            sent += len(events)
    tally = demo.report.delivery.tallies[("google_conversions", None)]
    assert tally.dry_run and sent == tally.would_send > 0
    assert tally.would_send + tally.rejected == orders(demo) > 0


def test_tiktok_audience_requests_are_accepted_by_the_tiktok_fake(demo: Demo) -> None:
    users = 0
    for dry in written(demo.folder / "tiktok_ads"):
        found = 0
        for request in dry["requests"]:
            assert request["url"] == TIKTOK + "segment/mapping/"
            assert request["headers"]["Access-Token"] == "***"
            mapping = tiktok_rules.parse_mapping(request["body"], ADVERTISER_ID)
            assert mapping.users <= tiktok_rules.MAX_USERS
            found += mapping.users
        assert found == dry["would_send"]
        users += found
    tallied = [t for (d, _), t in demo.report.delivery.tallies.items() if d == "tiktok_ads"]
    assert users > 0 and users == sum(t.would_send for t in tallied)


def test_tiktok_events_requests_are_accepted_by_the_tiktok_fake(demo: Demo) -> None:
    sent = 0
    for dry in written(demo.folder / "tiktok_events"):
        for request in dry["requests"]:
            assert request["url"] == TIKTOK + "event/track/"
            events = tiktok_rules.parse_events(request["body"], PIXEL_CODE)
            assert {e["event"] for e in events} == {"CompletePayment"}
            sent += len(events)
    tally = demo.report.delivery.tallies[("tiktok_events", None)]
    assert tally.dry_run and sent == tally.would_send > 0
    assert tally.would_send + tally.rejected == orders(demo) > 0


def test_no_raw_email_or_phone_is_in_any_dry_run_file(demo: Demo) -> None:
    files = list(demo.folder.rglob("*.json"))
    assert {p.parent.name for p in files} >= {*AUDIENCE_DESTINATIONS, *CONVERSION_DESTINATIONS}
    digits = {p.lstrip("+") for p in demo.phones}
    for path in files:
        text = path.read_text("utf-8")
        assert "@" not in text, path
        text = HASH.sub("", text)  # a digest may hold a run of digits like a phone's
        assert not any(phone in text for phone in digits), path


def test_status_and_the_demo_table_say_dry_run_and_count_what_was_written(demo: Demo) -> None:
    assert {*AUDIENCE_DESTINATIONS, *CONVERSION_DESTINATIONS} <= demo.dry
    tallies = demo.report.delivery.tallies
    for line in demo.status:
        if line.destination in (*AUDIENCE_DESTINATIONS, *CONVERSION_DESTINATIONS):
            assert line.dry_run and line.acknowledged == 0
            assert line.dry_run_written == tallies[(line.destination, line.audience)].would_send
    for name in CONVERSION_DESTINATIONS:
        would = tallies[(name, None)].would_send
        assert f"conversions → {name}: {would:,} would be sent (written as a dry run)" in (
            demo.table
        )
    assert "google_ads" in demo.table and "tiktok_ads" in demo.table
