"""Sync benchmark, ad platforms: delivering N records to each platform's contract fake, beside a
bare httpx client sending the same requests.

Run:  .venv/bin/python bench/sync.py --platforms [--changes N] [--quick]

For each of Meta Custom Audiences, Meta CAPI, Google Customer Match, Google conversions, TikTok
audiences and TikTok events: a fresh project whose one destination points at the platform's
fake of tests/fakes (served by uvicorn in this process) through `base_url`. Audience runs hold
N members with an email and a user id (written straight into the store's tables, as
bench/sync.py does); conversion runs ingest N orders of those people (the last hour, with page
URL, user agent and IP, so every platform takes them) and plan them. Timed, once each:

- deliver: claim, build the platform's requests (normalise, hash, batch), send, record;
- bare client: the requests carrying the records that the fake received during that delivery
  (Meta `/users` and `/events`, Google `:ingest`, TikTok `segment/mapping/` and `event/track/`),
  replayed from the capture log with one `httpx.Client`: the same bodies, the same batch sizes,
  the same fake. The audience lookup and creation and the token refresh cohortsync makes once
  per run are not replayed (a list name can be created only once).

Every record must arrive: the fake holds N members (or counts N conversions) after.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table
from tests.fakes.base import FakeServer
from tests.fakes.capture import Captured
from tests.fakes.google_data_manager import GoogleDataManagerFake
from tests.fakes.meta import MetaFake
from tests.fakes.tiktok import TiktokFake

from cohortsync.engine import Engine
from cohortsync.sync.ledger import ledger_for
from cohortsync.sync.retry import RetryPolicy
from cohortsync.sync.worker import Deliverer

AUDIENCE = "cio_bench"
SHOP = "https://shop.example.com/checkout/thank-you"
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Version/17.4 Safari/605"
DATA_PATHS = ("/users", "/events", ":ingest", "/segment/mapping/", "/event/track/")
"""Paths of the requests that carry records."""
_DROPPED = {"host", "content-length", "connection", "accept-encoding", "user-agent", "accept"}


@dataclass(frozen=True)
class Platform:
    """One platform destination: its fake, its YAML, what it receives, how to count arrivals."""

    label: str
    make: Callable[[], FakeServer]
    yaml: Callable[[Any], str]
    conversions: bool
    arrived: Callable[[Any], int]


def _google_yaml(fake: GoogleDataManagerFake, kind: str, extra: str) -> str:
    return (
        f"{{type: {kind}, operating_account_id: '{fake.account_id}', "
        f"refresh_token: '{fake.refresh_token}', client_id: '{fake.client_id}', "
        f"client_secret: '{fake.client_secret}', token_uri: '{fake.token_url}', "
        f"base_url: '{fake.base_url}', requests_per_minute: 1000000{extra}}}"
    )


def _action(fake: GoogleDataManagerFake) -> str:
    return next(iter(fake.conversion_action_ids))


def _google() -> GoogleDataManagerFake:
    return GoogleDataManagerFake(quota_per_minute=1_000_000)


PLATFORMS = (
    Platform(
        "Meta audiences",
        MetaFake,
        lambda f: (
            f"{{type: meta_custom_audience, ad_account_id: 'act_{f.ad_account_id}', "
            f"access_token: '{f.token}', base_url: '{f.base_url}'}}"
        ),
        False,
        lambda f: len(f.members(AUDIENCE)),
    ),
    Platform(
        "Meta CAPI",
        MetaFake,
        lambda f: (
            f"{{type: meta_capi, pixel_id: '{f.pixel_id}', access_token: '{f.token}', "
            f"base_url: '{f.base_url}'}}"
        ),
        True,
        lambda f: len(f.effective_events),
    ),
    Platform(
        "Google Customer Match",
        _google,
        lambda f: _google_yaml(f, "google_customer_match", ", accept_terms_of_service: true"),
        False,
        lambda f: len(f.members(AUDIENCE)),
    ),
    Platform(
        "Google conversions",
        _google,
        lambda f: _google_yaml(
            f,
            "google_conversions",
            f", conversion_action_id: '{next(iter(f.conversion_action_ids))}'",
        ),
        True,
        lambda f: len(f.effective_events),
    ),
    Platform(
        "TikTok audiences",
        TiktokFake,
        lambda f: (
            f"{{type: tiktok_audience, advertiser_id: '{f.advertiser_id}', "
            f"access_token: '{f.token}', base_url: '{f.base_url}'}}"
        ),
        False,
        lambda f: len(f.members(AUDIENCE)),
    ),
    Platform(
        "TikTok events",
        TiktokFake,
        lambda f: (
            f"{{type: tiktok_events, pixel_code: '{f.pixel_code}', "
            f"access_token: '{f.token}', base_url: '{f.base_url}'}}"
        ),
        True,
        lambda f: len(f.effective_events),
    ),
)


def project_yaml(destination: str, conversions: bool) -> str:
    """One audience (or one conversion rule) routed to the platform destination `ads`."""
    audience_to = "[]" if conversions else "[ads]"
    rules = (
        "conversions:\n  - {event: order_completed, as: Purchase, value: revenue, "
        "currency: USD, destinations: [ads]}\n"
        if conversions
        else ""
    )
    return f"""\
store: .cohortsync/store.duckdb
sources: {{web: {{write_key: wk_bench_0123456789}}}}
segments:
  anyone: {{event: added_to_cart}}
audiences:
  {AUDIENCE}:
    segment: anyone
    identifiers: [email]
    destinations: {audience_to}
destinations:
  ads: {destination}
{rules}"""


def seed_people(engine: Engine, n: int, members: bool, holdout_share: int = 0) -> None:
    """N profiles with an email and a user id; with `members`, all in the audience, one in
    `holdout_share` of them (by a hash of its number) held out when that is not 0."""
    now = datetime.now(UTC)
    engine.store.query("SELECT 1")  # type: ignore[attr-defined]
    con = engine.store._con  # type: ignore[attr-defined]  # bench setup writes tables directly
    con.execute("BEGIN TRANSACTION")
    con.execute("INSERT INTO profiles SELECT 'p' || i, ?, NULL FROM range(?) t(i)", [now, n])
    con.execute(
        "INSERT INTO identities SELECT 'email', 'person' || i || '@example.com', 'p' || i, ? "
        "FROM range(?) t(i)",
        [now, n],
    )
    con.execute(
        "INSERT INTO identities SELECT 'user_id', 'u' || i, 'p' || i, ? FROM range(?) t(i)",
        [now, n],
    )
    if members:
        held = f"hash(i) % {holdout_share} = 0" if holdout_share else "false"
        con.execute(
            f"INSERT INTO memberships SELECT 'audience', ?, 'p' || i, ?, NULL, {held}, 1 "
            "FROM range(?) t(i)",
            [AUDIENCE, now, n],
        )
    con.execute("COMMIT")


def orders(n: int) -> list[dict[str, Any]]:
    """One order per person in the last hour, as a browser-fed shop forwards it."""
    at = datetime.now(UTC) - timedelta(minutes=30)
    stamp = at.isoformat().replace("+00:00", "Z")
    return [
        {
            "type": "track",
            "messageId": f"order-{i}",
            "userId": f"u{i}",
            "event": "Order Completed",
            "timestamp": stamp,
            "properties": {"revenue": 20.0 + i % 50, "order_id": f"ord_{i}"},
            "context": {"page": {"url": SHOP}, "userAgent": UA, "ip": f"10.0.{i % 250}.{i % 200}"},
        }
        for i in range(n)
    ]


def replay(base_url: str, captured: list[Captured]) -> float:
    """Send the captured requests again with one bare httpx client; seconds taken."""
    requests = [
        (
            item.method,
            base_url + item.path + (f"?{item.query}" if item.query else ""),
            {k: v for k, v in item.headers if k.lower() not in _DROPPED},
            item.body,
        )
        for item in captured
    ]
    started = time.perf_counter()
    with httpx.Client(timeout=120) as client:
        for method, url, headers, body in requests:
            response = client.request(method, url, headers=headers, content=body or None)
            answer = orjson.loads(response.content or b"{}")
            code = answer.get("code", 0) if isinstance(answer, dict) else 0
            if response.status_code >= 300 or code != 0:  # TikTok refuses with HTTP 200
                raise RuntimeError(f"replay of {method} {url}: {response.status_code} {code}")
    return time.perf_counter() - started


def run_one(platform: Platform, n: int) -> tuple[float, float, int, int]:
    """(delivery seconds, bare-client seconds, records delivered, requests) for one platform."""
    folder = Path(tempfile.mkdtemp(prefix="cohortsync-bench-platform-"))
    try:
        with platform.make().serving() as fake:
            text = project_yaml(platform.yaml(fake), platform.conversions)
            (folder / "cohortsync.yml").write_text(text)
            with Engine.open(folder) as engine:
                seed_people(engine, n, members=not platform.conversions)
                if platform.conversions:
                    engine.ingest_messages(orders(n))
                setup = engine.sync_setup
                outbox = ledger_for(engine.store)
                now = datetime.now(UTC)
                outbox.plan(setup.routes, now)
                outbox.plan_conversions(setup.conversion_routes, now)
                with httpx.Client(timeout=120) as http:
                    opened = setup.open(folder, http, lambda: datetime.now(UTC))
                    deliverer = Deliverer(
                        outbox,
                        opened,
                        RetryPolicy(rng=random.Random(1)),
                        lambda: datetime.now(UTC),
                        setup.identifiers,
                    )
                    fake.log.clear()
                    started = time.perf_counter()
                    delivery = deliverer.run()
                    seconds = time.perf_counter() - started
                    for d in opened.values():
                        d.close()
            acked = delivery.total("acknowledged")
            arrived = platform.arrived(fake)
            assert acked == n == arrived, f"{platform.label}: {acked=} {arrived=}, expected {n}"
            captured = [c for c in fake.log.snapshot() if c.path.endswith(DATA_PATHS)]
            bare = replay(fake.base_url, captured)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return seconds, bare, acked, len(captured)


def run(n: int, console: Console) -> list[tuple[str, float, float, int, int]]:
    """Each platform in turn: (label, delivery s, bare-client s, records, requests)."""
    rows = []
    for platform in PLATFORMS:
        console.print(f"  {platform.label}: {n:,} records …", end="")
        seconds, bare, records, requests = run_one(platform, n)
        console.print(f" {seconds:.2f} s (bare client {bare:.2f} s)")
        rows.append((platform.label, seconds, bare, records, requests))
    return rows


def report(n: int, rows: list[tuple[str, float, float, int, int]], console: Console) -> None:
    """The table: records/s through cohortsync and through the bare client, and the ratio."""
    table = Table(title=f"{n:,} records to each platform's fake", title_justify="left")
    for column in ("platform", "requests", "deliver s", "records/s", "bare s", "bare records/s"):
        table.add_column(column, justify="left" if column == "platform" else "right")
    table.add_column("vs bare", justify="right")
    for label, seconds, bare, records, requests in rows:
        table.add_row(
            label,
            f"{requests:,}",
            f"{seconds:.2f}",
            f"{records / seconds:,.0f}",
            f"{bare:.2f}",
            f"{records / bare:,.0f}",
            f"{seconds / bare:.1f}×",
        )
    console.print(table)
