"""`sync --reconcile` against the ad platforms' contract fakes: a list that drifted behind
cohortsync's back is rebuilt to exactly the members it holds there, once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cohortsync.cli import app
from cohortsync.commands.reconcile import reconcile_json
from cohortsync.engine import Engine
from cohortsync.ops.reconcile import BELOW, FAILED, IN_SYNC, NOT_RECONCILABLE, REBUILT, RESUMED
from tests.conftest import PROJECT_YAML
from tests.fakes.google_data_manager import GoogleDataManagerFake
from tests.fakes.meta import MetaFake
from tests.postgres import postgres_schema
from tests.sync.conftest import Clock, person, track
from tests.sync.platforms import AUDIENCE_DESTINATION as ADS
from tests.sync.platforms import GooglePlatform, MetaPlatform, Platform, serving

AUDIENCE = "cio_cart_1h"
DUCKDB = ".cohortsync/store.duckdb"
PEOPLE = 40


def project_yaml(platform: Platform) -> str:
    return (
        PROJECT_YAML
        + f"""\
segments:
  cart_1h: {{event: added_to_cart, within: 1h}}
audiences:
  {AUDIENCE}:
    segment: cart_1h
    holdout: {{percent: 10}}
    identifiers: [email, phone]
    destinations: [{ADS}, tiktok, hooks]
destinations:
{platform.destinations_yaml()}  tiktok:
    type: tiktok_audience
    advertiser_id: "7012345678901234567"
    access_token: tok
    base_url: http://127.0.0.1:9/open_api/v1.3
  hooks:
    type: webhook
    url: http://127.0.0.1:9/hook
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
"""
    )


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def stray(n: int) -> str:
    return sha(f"stray{n}@elsewhere.example")


def expected(engine: Engine) -> set[str]:
    """SHA-256 of the normalised emails of the members outside the holdout."""
    return {sha(m.email) for m in engine.members(AUDIENCE) if not m.holdout and m.email}


def drift(platform: Platform, add: int, drop: int) -> None:
    """Members added and removed on the platform, behind cohortsync's back."""
    if isinstance(platform, MetaPlatform):
        meta: MetaFake = platform.fake
        rows = sorted(meta.member_rows(AUDIENCE), key=lambda r: r.get("EMAIL", ""))
        meta.drop_members(AUDIENCE, rows[: max(drop, 0)])
        meta.seed_members(AUDIENCE, [{"EMAIL": stray(n)} for n in range(add)])
    else:
        assert isinstance(platform, GooglePlatform)
        google: GoogleDataManagerFake = platform.fake
        google.drop_members(AUDIENCE, drop)
        google.seed_members(AUDIENCE, [[f"email:{stray(n)}"] for n in range(add)])


def fail_rebuild(platform: Platform) -> None:
    """The platform fails the rebuild's next request (for Google: the first ingest, after
    removeAll went through)."""
    if isinstance(platform, MetaPlatform):
        platform.fake.fail(500, times=1, path="/usersreplace")
    else:
        platform.fake.fail(503, times=1, path="/v1/audienceMembers:ingest")


@pytest.fixture(params=["meta", "google"])
def platform(request: pytest.FixtureRequest) -> Iterator[Platform]:
    with serving(str(request.param)) as found:
        yield found


@pytest.fixture
def store(request: pytest.FixtureRequest) -> Iterator[str]:
    """The store: DuckDB, unless a test asks for Postgres too (`indirect` parameter)."""
    if getattr(request, "param", "duckdb") == "duckdb":
        yield DUCKDB
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
def shop(project_dir: Path, platform: Platform, clock: Clock, store: str) -> Iterator[Engine]:
    """A shop whose audience was synced to the platform, then drifted there."""
    text = project_yaml(platform).replace(f"store: {DUCKDB}", f"store: {store}")
    (project_dir / "cohortsync.yml").write_text(text, encoding="utf-8")
    platform.set_now(clock.now)
    with Engine.open(project_dir) as engine:
        engine.ingest_messages([person(n, clock.now - timedelta(hours=1)) for n in range(PEOPLE)])
        engine.ingest_messages([track(n, "added_to_cart", clock.now) for n in range(PEOPLE)])
        engine.compute(clock.now)
        engine.sync(destination=ADS, clock=clock)
        assert platform.members(AUDIENCE) == expected(engine)
        yield engine


def route(report: Any, destination: str = ADS) -> Any:
    return next(r for r in report.routes if r.destination == destination)


@pytest.mark.parametrize("store", ["duckdb", "postgres"], indirect=True)
def test_drifted_list_is_rebuilt_to_exactly_the_desired_members_then_left_alone(
    shop: Engine, platform: Platform, clock: Clock
) -> None:
    want = expected(shop)
    drift(platform, add=6, drop=2)
    assert platform.members(AUDIENCE) != want
    first = route(shop.reconcile(destination=ADS, clock=clock))
    assert first.action == REBUILT, first.note
    assert (first.desired, first.drift) == (len(want), 4)
    assert first.platform.lower == len(want) + 4
    assert first.sent == len(want) and first.requests >= 1
    assert platform.members(AUDIENCE) == want
    before = len(platform.fake.log)
    second = shop.reconcile(destination=ADS, clock=clock)
    assert route(second).action == IN_SYNC
    assert (route(second).requests, second.changed) == (0, False)
    writes = [c for c in platform.fake.log[before:] if c.method != "GET" and c.path != "/token"]
    assert writes == []  # a second run only reads
    assert platform.members(AUDIENCE) == want


def test_below_the_threshold_it_only_reports(
    shop: Engine, platform: Platform, clock: Clock
) -> None:
    drift(platform, add=1, drop=0)  # 1 of ~36: under 5%
    (shop.loaded.root / "cohortsync.yml").write_text(
        project_yaml(platform) + "sync: {reconcile_threshold: 0.05}\n", encoding="utf-8"
    )
    with Engine.open(shop.loaded.root) as engine:
        found = route(engine.reconcile(destination=ADS, clock=clock))
    assert (found.action, found.drift, found.requests) == (BELOW, 1, 0)
    assert stray(0) in platform.members(AUDIENCE)


@pytest.mark.parametrize("store", ["duckdb", "postgres"], indirect=True)
def test_a_platform_error_mid_rebuild_leaves_it_retryable_and_a_rerun_completes(
    shop: Engine, platform: Platform, clock: Clock
) -> None:
    want = expected(shop)
    drift(platform, add=5, drop=3)
    fail_rebuild(platform)
    failed = route(shop.reconcile(destination=ADS, clock=clock))
    assert failed.action == FAILED and failed.retryable, failed.note
    if isinstance(platform, GooglePlatform):
        assert platform.members(AUDIENCE) == set()  # emptied, not yet refilled
    rerun = route(shop.reconcile(destination=ADS, clock=clock))
    assert rerun.action in (RESUMED, REBUILT), rerun.note
    assert platform.members(AUDIENCE) == want
    assert route(shop.reconcile(destination=ADS, clock=clock)).action == IN_SYNC


def test_destinations_without_replace_say_why(
    shop: Engine, platform: Platform, clock: Clock
) -> None:
    report = shop.reconcile(clock=clock)
    tiktok, hooks = route(report, "tiktok"), route(report, "hooks")
    assert tiktok.action == hooks.action == NOT_RECONCILABLE
    assert "REPLACE" in tiktok.note and "segment/mapping" in tiktok.note
    assert "no member count and no way to replace a whole list" in hooks.note


def test_the_run_is_recorded_as_one_sync_run(
    shop: Engine, platform: Platform, clock: Clock
) -> None:
    drift(platform, add=4, drop=0)
    before = len(shop.sync_runs(100))
    found = route(shop.reconcile(destination=ADS, clock=clock))
    runs = shop.sync_runs(100)
    assert len(runs) == before + 1
    run = runs[0]
    assert (run.destination, run.planned, run.batches, run.acknowledged) == (
        ADS,
        0,
        found.requests,
        found.sent,
    )


def test_only_hashed_identifiers_go_on_the_wire_or_into_output_and_progress(
    shop: Engine, platform: Platform, clock: Clock
) -> None:
    drift(platform, add=3, drop=1)
    before = len(platform.fake.log)
    fail_rebuild(platform)
    failed = shop.reconcile(destination=ADS, clock=clock)
    assert route(failed).action == FAILED
    progress = [p.read_text() for p in (shop.loaded.root / ".cohortsync/reconcile").iterdir()]
    report = shop.reconcile(destination=ADS, clock=clock)
    assert route(report).action in (RESUMED, REBUILT)
    printed = json.dumps([reconcile_json(failed), reconcile_json(report)], default=str)
    raws: set[str] = set()
    for n in range(PEOPLE):
        traits = person(n, datetime(2026, 1, 1, tzinfo=UTC))["traits"]
        email = traits["email"]
        raws |= {email, email.lower(), email.strip().lower()}
        if "phone" in traits:
            digits = "".join(ch for ch in traits["phone"] if ch.isdigit())
            raws |= {traits["phone"], digits, "+" + digits, digits[1:]}
    sent = platform.fake.log[before:]
    assert any(c.method == "POST" for c in sent)
    for captured in sent:
        text = captured.text()
        assert [raw for raw in raws if raw in text] == [], f"{captured.path} carried raw PII"
    for text in [printed, *progress]:
        assert [raw for raw in raws if raw in text] == []


def test_the_command_prints_a_table_and_json(
    shop: Engine, platform: Platform, clock: Clock
) -> None:
    drift(platform, add=2, drop=0)
    root = shop.loaded.root
    shop.close()
    runner = CliRunner()
    dry = runner.invoke(app, ["sync", "--reconcile", "--dry-run", "--json", "--project", str(root)])
    assert dry.exit_code == 0, dry.output
    routes = {r["destination"]: r for r in json.loads(dry.stdout)["routes"]}
    assert routes[ADS]["action"] == "would rebuild"
    assert routes[ADS]["drift"] == 2 and routes[ADS]["requests"] == 0
    assert stray(1) in platform.members(AUDIENCE)
    table = runner.invoke(app, ["sync", "--reconcile", "--project", str(root)])
    assert table.exit_code == 0, table.output
    assert "rebuilt" in table.output and "not reconcilable" in table.output
    assert "tiktok cio_cart_1h: not reconcilable: TikTok's Segment API" in table.output
    assert stray(1) not in platform.members(AUDIENCE)
    again = runner.invoke(app, ["sync", "--reconcile", "--project", str(root)])
    assert "nothing changed on any platform" in again.output
