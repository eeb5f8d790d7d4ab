"""What the ad platforms say back reaches `status`: Meta's audience size and operation status
read on a schedule, its invalid entries per upload, Google's match-rate bucket and error
counts, each with when it was read; `—` (never 0) where a platform said nothing (TikTok)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from cohortsync.cli import app
from cohortsync.engine import Engine
from cohortsync.render import status_table
from cohortsync.store import duckdb_schema, postgres_schema
from cohortsync.store.outbox import PlatformReport, RouteStatus
from cohortsync.sync.ledger import ledger_for
from cohortsync.sync.retry import RetryPolicy
from tests.conftest import LiveServer
from tests.fakes.google_data_manager import GoogleDataManagerFake
from tests.fakes.meta import MetaFake
from tests.fakes.tiktok import TiktokFake, tiktok_type
from tests.sync.conftest import MIN, Clock, person, track
from tests.sync.platforms import AUDIENCE_DESTINATION as ADS
from tests.sync.platforms import GooglePlatform, MetaPlatform

AUDIENCE = "cio_cart_1h"
ADMIN_TOKEN = "admin-token-for-platform-reports-0123"
SEGMENT = "segments:\n  cart_1h: {event: added_to_cart, within: 1h}\n"


def audience_yaml(*destinations: str) -> str:
    return (
        f"{SEGMENT}audiences:\n  {AUDIENCE}:\n    segment: cart_1h\n"
        f"    identifiers: [email, phone]\n    destinations: [{', '.join(destinations)}]\n"
    )


def open_shop(project: Path, yaml: str, clock: Clock) -> Engine:
    settings = project / "cohortsync.yml"
    settings.write_text(settings.read_text(encoding="utf-8") + yaml, encoding="utf-8")
    engine = Engine.open(project)
    engine.ingest_messages([person(n, clock.now - timedelta(hours=1)) for n in range(6)])
    engine.ingest_messages([track(n, "added_to_cart", clock.now) for n in range(6)])
    engine.compute(clock.now)
    return engine


def line(engine: Engine, destination: str) -> RouteStatus:
    (found,) = [s for s in engine.sync_status() if s.destination == destination]
    return found


def wide_text(rows: list[RouteStatus]) -> list[str]:
    console = Console(width=400, record=True, color_system=None)
    console.print(status_table(rows, wide=True))
    return console.export_text().splitlines()


@pytest.fixture
def meta() -> Iterator[MetaPlatform]:
    with MetaFake().serving() as fake:
        yield MetaPlatform(fake)


@pytest.fixture
def google() -> Iterator[GooglePlatform]:
    with GoogleDataManagerFake().serving() as fake:
        yield GooglePlatform(fake)


def size_reads(meta: MetaPlatform) -> list[str]:
    """The audience GETs that asked for the size fields."""
    return [
        item.query
        for item in meta.fake.log.to("/v25.0/", "GET")
        if "approximate_count_lower_bound" in item.query
    ]


def test_meta_sizes_are_read_every_hour_and_status_shows_them_with_the_read_time(
    project_on_both: Path, meta: MetaPlatform, clock: Clock, policy: RetryPolicy
) -> None:
    meta.set_now(clock.now)
    destinations = "destinations:\n" + meta.destinations_yaml()
    shop = open_shop(project_on_both, audience_yaml(ADS) + destinations, clock)
    with shop:
        assert line(shop, ADS).platform == PlatformReport()  # nothing read before a sync
        first = clock.now
        shop.sync(destination=ADS, clock=clock, policy=policy)
        assert len(size_reads(meta)) == 1
        report = line(shop, ADS).platform
        assert (report.size_low, report.size_high, report.operation_status) == (6, 6, "Normal")
        assert report.size_read_at == first
        assert (report.invalid_entries, report.invalid_read_at) == (0, first)  # said 0
        assert report.match_rate_low is None

        meta.fake.seed_members(AUDIENCE, [{"EMAIL": "a" * 64}, {"EMAIL": "b" * 64}])
        clock.advance(30 * MIN)
        shop.sync(destination=ADS, clock=clock, policy=policy)
        assert len(size_reads(meta)) == 1  # read again only once the hour has passed
        assert line(shop, ADS).platform.size_low == 6

        clock.advance(31 * MIN)
        shop.sync(destination=ADS, clock=clock, policy=policy)
        assert len(size_reads(meta)) == 2
        report = line(shop, ADS).platform
        assert (report.size_low, report.size_high) == (8, 8)
        assert report.size_read_at == clock.now
        assert report.invalid_read_at == first  # no upload since: read when it was answered

    runner = CliRunner(env={"COLUMNS": "80", "COHORTSYNC_PROJECT": None})
    answer = runner.invoke(app, ["status", "--project", str(project_on_both), "--json"])
    assert answer.exit_code == 0, answer.output
    (route,) = [r for r in json.loads(answer.stdout)["routes"] if r["destination"] == ADS]
    assert route["desired"] == 6 and route["match_rate"] == 1.0
    platform = route["platform"]
    assert (platform["size_low"], platform["size_high"]) == (8, 8)
    assert platform["operation_status"] == "Normal"
    assert platform["size_read_at"].startswith(clock.now.isoformat()[:19])
    assert platform["invalid_entries"] == 0
    assert platform["match_rate_low"] is None


def test_a_meta_read_that_fails_is_tried_again_on_the_next_sync(
    project_on_both: Path, meta: MetaPlatform, clock: Clock, policy: RetryPolicy
) -> None:
    meta.set_now(clock.now)
    destinations = "destinations:\n" + meta.destinations_yaml()
    with open_shop(project_on_both, audience_yaml(ADS) + destinations, clock) as shop:
        shop.sync(destination=ADS, clock=clock, policy=policy)
        audience_id = meta.fake.audiences()[AUDIENCE]
        meta.fake.faults.fail(500, times=1, path=f"/v25.0/{audience_id}", method="GET")
        clock.advance(61 * MIN)
        shop.sync(destination=ADS, clock=clock, policy=policy)
        assert line(shop, ADS).platform.size_read_at == clock.now - 61 * MIN  # kept as read

        clock.advance(MIN)
        shop.sync(destination=ADS, clock=clock, policy=policy)
        assert line(shop, ADS).platform.size_read_at == clock.now


def test_google_bucket_and_errors_show_in_the_status_table(
    project_on_both: Path, google: GooglePlatform, clock: Clock, policy: RetryPolicy
) -> None:
    google.set_now(clock.now)
    destinations = "destinations:\n" + google.destinations_yaml()
    with open_shop(project_on_both, audience_yaml(ADS) + destinations, clock) as shop:
        shop.sync(destination=ADS, clock=clock, policy=policy)
        assert line(shop, ADS).platform == PlatformReport()  # Google answers later

        clock.advance(40 * MIN)
        google.set_now(clock.now)
        google.fake.match_rate = "MATCH_RATE_RANGE_61_TO_70"
        google.fake.error_counts = {"PROCESSING_ERROR_REASON_INVALID_EMAIL": 2}
        shop.sync(destination=ADS, clock=clock, policy=policy)
        status = line(shop, ADS)

    report = status.platform
    assert (report.match_rate_low, report.match_rate_high) == (61, 70)
    assert status.platform_match_rate == (61, 70)
    assert (report.invalid_entries, report.invalid_read_at) == (2, clock.now)
    assert report.match_rate_read_at == clock.now
    assert report.size_low is None
    (row,) = [text for text in wide_text([status]) if AUDIENCE in text]
    assert "match 61–70%, 2 invalid" in row
    assert f"{clock.now:%Y-%m-%d %H:%M}" in row


@pytest.fixture
def meta_and_tiktok(
    project_dir: Path, meta: MetaPlatform, clock: Clock, policy: RetryPolicy
) -> Iterator[Engine]:
    """One audience synced to Meta and to TikTok (DuckDB), the engine open."""
    with TiktokFake().serving() as tiktok:
        meta.set_now(clock.now)
        yaml = (
            f"admin:\n  tokens: [{ADMIN_TOKEN}]\n"
            + audience_yaml(ADS, "tiktok_ads")
            + "destinations:\n"
            + meta.destinations_yaml()
            + f"""\
  tiktok_ads:
    type: "{tiktok_type("tiktok_audience")}"
    advertiser_id: "{tiktok.advertiser_id}"
    access_token: {tiktok.token}
    base_url: {tiktok.base_url}
"""
        )
        with open_shop(project_dir, yaml, clock) as shop:
            shop.sync(clock=clock, policy=policy)
            yield shop


def test_tiktok_shows_members_and_coverage_only(meta_and_tiktok: Engine) -> None:
    rows = [s for s in meta_and_tiktok.sync_status() if s.audience == AUDIENCE]

    tiktok_line = next(s for s in rows if s.destination == "tiktok_ads")
    assert tiktok_line.desired == 6 and tiktok_line.match_rate == 1.0
    assert tiktok_line.platform == PlatformReport()
    text = wide_text(rows)
    (tiktok_row,) = [t for t in text if "tiktok_ads" in t]
    (meta_row,) = [t for t in text if ADS in t]
    cells = [cell.strip() for cell in tiktok_row.strip(" │").split("│")]
    assert cells[2] == "6" and cells[8] == "100%"  # members and identifier coverage
    assert cells[-2:] == ["—", "—"]  # said nothing: not 0
    assert "6 people, 0 invalid" in meta_row


def test_the_destination_page_shows_what_the_platform_reports(
    meta_and_tiktok: Engine, clock: Clock
) -> None:
    server = LiveServer(meta_and_tiktok, background=False)  # the page reads; nothing moves
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            client.post("/ui/login", data={"token": ADMIN_TOKEN, "next": "/ui/"})
            meta_page = client.get(f"/ui/destinations/{ADS}/delivery")
            tiktok_page = client.get("/ui/destinations/tiktok_ads/delivery")
    finally:
        server.stop()

    assert meta_page.status_code == tiktok_page.status_code == 200
    assert "the platform reports" in meta_page.text
    row = meta_page.text.split(f'href="/ui/audiences/{AUDIENCE}"', 1)[1].split("</tr>", 1)[0]
    assert "6 people, 0 invalid" in row
    assert f"{clock.now:%Y-%m-%d %H:%M} UTC" in row
    row = tiktok_page.text.split(f'href="/ui/audiences/{AUDIENCE}"', 1)[1].split("</tr>", 1)[0]
    assert "<td>—</td>\n  <td>—</td>" in row


def test_the_narrow_status_puts_what_the_platform_says_under_its_route() -> None:
    at = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    said = PlatformReport(1_000, 1_200, "replace_in_progress", at, invalid_entries=3,
                          invalid_read_at=at)  # fmt: skip
    rows = [
        RouteStatus(
            "meta_ads", AUDIENCE, 1_100, 1_100, 0, 0, 0, 0, 1_100, at, None, None, platform=said
        ),
        RouteStatus("tiktok_ads", AUDIENCE, 1_100, 1_100, 0, 0, 0, 0, 900, at, None, None),
    ]
    console = Console(width=80, record=True, color_system=None)
    console.print(status_table(rows))
    lines = console.export_text().splitlines()

    assert max(len(text) for text in lines) <= 80
    assert lines[1].split()[:2] == ["destination", "desired"]  # the grouped layout
    first = next(n for n, text in enumerate(lines) if "says:" in text)
    below = " ".join(text.strip() for text in lines[first:])
    assert below == (
        "meta_ads says: 1,000–1,200 people (replace_in_progress), 3 invalid (read 05-01 12:00)"
    )  # tiktok_ads said nothing: no line


def test_diagnostics_stored_before_the_upgrade_are_carried_over(project_on_both: Path) -> None:
    at = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    with Engine.open(project_on_both) as engine:
        postgres = engine.store.dialect == "postgres"
        latest = postgres_schema.LATEST_VERSION if postgres else duckdb_schema.LATEST_VERSION
        stats = [
            {"sent": 5, "records_processed": 5, "match_rate_low": 41, "match_rate_high": 50},
            {
                "sent": 4,
                "records_processed": 4,
                "match_rate_low": 61,
                "match_rate_high": 70,
                "error_records": 2,
            },
            {"sent": 3, "requests": 1},  # not diagnosed yet
        ]
        with ledger_for(engine.store).sql.transaction() as tx:  # as the previous version left it
            tx.run("DROP TABLE platform_reports")
            tx.run("DELETE FROM schema_migrations WHERE version = $v", {"v": latest})
            for n, figures in enumerate(stats):
                tx.run(
                    "INSERT INTO batch_results (batch_id, destination, audience, kind, op, "
                    "records, acknowledged, rejected, attempts, resolved_at, stats) VALUES "
                    "($id, 'google', $audience, 'changes', 'add', 5, 5, 0, 1, $at, $stats)",
                    {"id": f"b{n}", "audience": AUDIENCE, "at": at + n * MIN,
                     "stats": json.dumps(figures)},
                )  # fmt: skip
        assert engine.store.migrate() == latest
        with ledger_for(engine.store).sql.transaction() as tx:
            rows = tx.run(
                "SELECT destination, audience, match_rate_low, match_rate_high, error_records, "
                "diagnosed_at FROM platform_reports"
            )
    assert [tuple(row) for row in rows] == [("google", AUDIENCE, 61, 70, 2, None)]
