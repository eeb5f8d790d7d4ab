"""PII scan of every output (reliability.md §4.7 P-1, P-2): a shop's events flow through
`serve` and the CLI to Meta Custom Audiences, Meta CAPI, Google Customer Match and conversions,
TikTok audiences and events, a webhook, Segment, hashed files and the warehouse, against their
contract fakes, with 4xx and 5xx answers (TikTok's: HTTP 200 with an error code) that echo
identifiers back; then every request each fake captured, every dry-run file, every exported
file, every log line, every CLI output and error, and every row of the delivery tables is
searched for the seeded emails, phones and phone-like user ids, in every form they were written
or could be encoded in.

Outputs that hold raw identifiers by design are left out, each with its reason (`EXCLUDED`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

import httpx
import phonenumbers
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cohortsync.cli import app
from cohortsync.engine import Engine
from cohortsync.identity.normalize import normalize_email
from tests.conftest import PROJECT_YAML, WRITE_KEY, LiveServer
from tests.fakes.base import FakeServer
from tests.fakes.capture import Captured
from tests.fakes.google_data_manager import GoogleDataManagerFake
from tests.fakes.meta import MetaFake
from tests.fakes.segment import SegmentFake
from tests.fakes.tiktok import TiktokFake, tiktok_type
from tests.fakes.webhook import WebhookFake
from tests.sync.platforms import GOOGLE_CONVERSIONS, GOOGLE_MATCH

AUDIENCE = "cio_cart_abandon_6h"
PEOPLE = 12
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15"
EXCLUDED = {
    "warehouse": "the team's own warehouse stores identifiers normalised, not hashed, by design "
    "(README: Warehouse): its database and its dry-run files (the rows it would write) are "
    "left out; its errors are scanned",
    "hooks": "a webhook is the team's own receiver: each record's `identifiers`, and a "
    "conversion's `properties` and `context` (the source event's own data), go as they are "
    "(README: Webhook); the rest of each request is scanned",
    "seg": "Segment is the team's own CDP: `userId`, `anonymousId`, `traits`, and a "
    "conversion's `properties` and `context` go as they are (README: Segment-compatible APIs); "
    "the rest of each request is scanned",
}
OWN_DATA = {
    "hooks": frozenset({"identifiers", "properties", "context"}),
    "seg": frozenset({"userId", "anonymousId", "traits", "properties", "context"}),
}


@dataclass(frozen=True)
class Person:
    """A seeded shopper: identifiers exactly as the shop's events carry them."""

    n: int
    user_id: str
    email: str
    phone: str

    @property
    def phone_like_id(self) -> bool:
        return self.user_id.isdigit()

    def needles(self) -> set[str]:
        """Every form of this person's email, phone and phone-like user id, lower-cased."""
        found = {self.email, normalize_email(self.email), quote(self.email, safe="")}
        found |= {quote_plus(self.email), self.email.replace("@", "%40")}
        number = phonenumbers.parse(self.phone, "US")
        national = phonenumbers.national_significant_number(number)
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        area, exchange, line = national[:3], national[3:6], national[6:]
        found |= {self.phone, e164, e164[1:], national, quote(e164, safe="")}
        found |= {f"({area}) {exchange}-{line}", f"{area}-{exchange}-{line}"}
        found |= {f"{area}.{exchange}.{line}", f"{area} {exchange} {line}"}
        if self.phone_like_id:
            found.add(self.user_id)
        return {needle.lower() for needle in found}


def person(n: int) -> Person:
    email = [f"Ann.Lee{n}+vip@Example.com", f"BOB.SMITH{n}@EXAMPLE.ORG", f"carol_{n}@shop.co.uk"]
    phone = [f"(650) 555-1{n:03d}", f"650.555.1{n:03d}", f"+1 650 555 1{n:03d}"]
    user_id = f"6505552{n:03d}" if n % 3 == 1 else f"cust_{n}"
    return Person(n, user_id, email[n % 3], phone[n % 3])


PEOPLE_SEEDED = [person(n) for n in range(PEOPLE)]
NOBODY = Person(999, "cust_999", "Nobody.Here+x@Example.com", "(650) 555-1999")
"""Looked up by the CLI and not found: the error must not quote the identifier back."""
ECHO = "unknown subscriber (650) 555-1001, ann.lee0%2Bvip%40example.com, 6505552001"


def project_yaml(
    meta: MetaFake,
    meta_raw: MetaFake,
    hooks: WebhookFake,
    seg: SegmentFake,
    tiktok: TiktokFake,
    google: GoogleDataManagerFake,
) -> str:
    return (
        PROJECT_YAML
        + f"""\
sync: {{backoff_base: 0.2, backoff_cap: 1}}
segments:
  cart_6h:
    all:
      - {{event: added_to_cart, within: 6h}}
      - not: {{event: order_completed, since: added_to_cart}}
audiences:
  {AUDIENCE}:
    segment: cart_6h
    refresh: realtime
    holdout: {{percent: 30}}
    destinations: [meta_ads, meta_raw_ids, google_ads, hooks, seg, exports, warehouse, tiktok_ads]
destinations:
  meta_ads:
    type: meta_custom_audience
    ad_account_id: act_{meta.ad_account_id}
    access_token: {meta.token}
    api_url: {meta.base_url}
  meta_raw_ids:
    type: meta_custom_audience
    ad_account_id: act_{meta_raw.ad_account_id}
    access_token: {meta_raw.token}
    api_url: {meta_raw.base_url}
    hash_external_id: false
  meta_capi:
    type: meta_capi
    pixel_id: "{meta.pixel_id}"
    access_token: {meta.token}
    api_url: {meta.base_url}
  google_ads:
    type: {GOOGLE_MATCH}
    accept_terms_of_service: true
{google_settings(google)}  google_conv:
    type: {GOOGLE_CONVERSIONS}
    conversion_action_id: "{next(iter(google.conversion_action_ids))}"
{google_settings(google)}  hooks: {{type: webhook, url: "{hooks.url}", secret: "{hooks.secret}"}}
  seg: {{type: segment, url: "{seg.url}", write_key: {seg.write_key}}}
  exports: {{type: files, path: exports, platform: meta}}
  tiktok_ads:
    type: "{tiktok_type("tiktok_audience")}"
    advertiser_id: "{tiktok.advertiser_id}"
    access_token: {tiktok.token}
    base_url: {tiktok.base_url}
  tiktok_pixel:
    type: "{tiktok_type("tiktok_events")}"
    pixel_code: {tiktok.pixel_code}
    access_token: {tiktok.token}
    base_url: {tiktok.base_url}
  warehouse: {{type: warehouse, url: "duckdb:///warehouse.duckdb"}}
conversions:
  - event: order_completed
    as: Purchase
    value: revenue
    currency: USD
    destinations: [meta_capi, google_conv, hooks, seg, warehouse, tiktok_pixel]
"""
    )


def google_settings(google: GoogleDataManagerFake) -> str:
    """The account and OAuth client of the Google fake, as destination settings."""
    return f"""\
    operating_account_id: "{google.account_id}"
    refresh_token: "{google.refresh_token}"
    client_id: "{google.client_id}"
    client_secret: "{google.client_secret}"
    token_uri: {google.token_url}
    base_url: {google.base_url}
"""


def google_echo(code: int) -> dict[str, Any]:
    """A google.rpc.Status whose message quotes identifiers back."""
    return {"error": {"code": code, "status": "INVALID_ARGUMENT", "message": ECHO}}


def stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def browser(who: Person, path: str) -> dict[str, Any]:
    """A page context whose URL carries the shopper's email and phone, as shops' often do."""
    query = f"email={quote(who.email, safe='')}&phone={quote(who.phone, safe='')}&utm_source=fb"
    url = f"https://shop.example.com/{path}?{query}#{who.email}"
    return {"ip": "203.0.113.7", "userAgent": UA, "page": {"url": url}}


def identify(who: Person, at: datetime) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": f"id-{who.n}",
        "userId": who.user_id,
        "timestamp": stamp(at),
        "traits": {"email": who.email, "phone": who.phone},
        "context": browser(who, "account"),
    }


def track(who: Person, event: str, at: datetime, tag: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": f"{tag}-{who.n}",
        "userId": who.user_id,
        "event": event,
        "timestamp": stamp(at),
        "properties": properties,
        "context": browser(who, "checkout/thanks" if event == "order_completed" else "cart"),
    }


@dataclass
class Outputs:
    """Every text the flow produced, by where it came from."""

    texts: list[tuple[str, str]]

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))


@pytest.fixture
def fakes() -> Iterator[tuple[MetaFake, MetaFake, WebhookFake, SegmentFake]]:
    """Meta with hashed ids, Meta for the opt-out account, a webhook receiver, Segment."""
    meta, meta_raw = MetaFake(hashed_external_ids=True), MetaFake()
    hooks, seg = WebhookFake(), SegmentFake()
    with meta.serving(), meta_raw.serving(), hooks.serving(), seg.serving():
        yield meta, meta_raw, hooks, seg


def eventually(missing: Callable[[], list[str]], seconds: float = 30.0) -> None:
    """Wait until `missing()` is empty; fail naming what is still missing."""
    deadline = time.monotonic() + seconds
    while left := missing():
        assert time.monotonic() < deadline, f"still missing: {left}"
        time.sleep(0.05)


def graph_echo(code: int) -> dict[str, Any]:
    """A Graph error whose message quotes identifiers back."""
    return {"error": {"message": f"(#{code}) {ECHO}", "type": "OAuthException", "code": code}}


def test_no_output_holds_a_raw_identifier(
    tmp_path: Path,
    fakes: tuple[MetaFake, MetaFake, WebhookFake, SegmentFake],
    tiktok_fake: TiktokFake,
    google_fake: GoogleDataManagerFake,
    caplog: pytest.LogCaptureFixture,
) -> None:
    meta, meta_raw, hooks, seg = fakes
    tiktok = tiktok_fake
    google = google_fake
    settings = project_yaml(*fakes, tiktok, google)
    (tmp_path / "cohortsync.yml").write_text(settings, encoding="utf-8")
    caplog.set_level(logging.DEBUG)
    outputs = Outputs([])
    now = datetime.now(UTC)
    meta.known_people({"email": p.email, "phone": p.phone} for p in PEOPLE_SEEDED)

    # serve: ingest over HTTP, real-time evaluation and delivery; Meta fails once with a 500 and
    # the webhook refuses its first batch with a 400, both quoting identifiers back.
    meta.fail(500, times=1, body=graph_echo(2), path="/users")
    google.fail(500, times=1, body=google_echo(500), path="audienceMembers:ingest")
    hooks.fail(400, times=1, body={"error": ECHO})
    tiktok.refuse(50000, times=1, message=ECHO, path="/segment/mapping/")
    with Engine.open(tmp_path) as engine:
        server = LiveServer(engine)
        server.start()
        try:
            batch = [identify(p, now - timedelta(minutes=30)) for p in PEOPLE_SEEDED]
            cart = now - timedelta(minutes=20)
            batch += [track(p, "Added To Cart", cart, "cart") for p in PEOPLE_SEEDED]
            response = httpx.post(
                f"{server.url}/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, "")
            )
            assert response.status_code == 200, response.text
            eventually(lambda: _delivered(meta, hooks, seg, tmp_path, google) + _on_tiktok(tiktok))
        finally:
            server.stop()

    # the CLI: orders (conversions, and exits), with Segment and CAPI refusing once (400) and
    # the webhook failing once (503), all quoting identifiers back; status; retry of the dead
    # letters; a dry run of new cart adds; a lookup that finds nobody.
    runner = CliRunner()

    def cli(*args: str, ok: bool = True) -> Any:
        result = runner.invoke(app, [*args, "--project", str(tmp_path)])
        outputs.add(f"cohortsync {' '.join(args)}", result.output + str(result.exception or ""))
        assert (result.exit_code == 0) is ok, result.output
        return result

    orders, ordered = tmp_path / "orders.jsonl", now - timedelta(minutes=10)
    orders.write_text(
        "\n".join(
            json.dumps(track(p, "order_completed", ordered, "order", revenue=20.0 + p.n))
            for p in PEOPLE_SEEDED
        ),
        encoding="utf-8",
    )
    seg.fail(400, times=1, body={"code": "invalid_request", "message": ECHO})
    meta.fail(400, times=1, body=graph_echo(100), path="/events")
    google.fail(400, times=1, body=google_echo(400), path="events:ingest")
    hooks.fail(503, times=1, body={"error": ECHO})
    tiktok.refuse(40002, times=1, message=ECHO, path="/event/track/")
    cli("ingest", str(orders))
    cli("compute")
    cli("sync", "--json")
    cli("status")
    cli("status", "--json")
    cli("sync", "--retry-dead", "--json")
    again = tmp_path / "again.jsonl"
    later = datetime.now(UTC)
    again.write_text(
        "\n".join(json.dumps(track(p, "Added To Cart", later, "again")) for p in PEOPLE_SEEDED),
        encoding="utf-8",
    )
    cli("ingest", str(again))
    cli("compute")
    cli("sync", "--dry-run")
    time.sleep(1.2)  # the webhook's 503 batch comes due (backoff_cap: 1)
    cli("sync", "--json")
    cli("profile", f"phone:{NOBODY.phone}", ok=False)
    cli("profile", f"email:{NOBODY.email}", ok=False)

    with Engine.open(tmp_path) as engine:
        _figures_are_true(engine, meta, meta_raw)
        _store_outputs(engine, outputs)

    fakes_by_name = {"meta": meta, "meta_raw_ids": meta_raw, "google": google}
    _request_outputs({**fakes_by_name, "hooks": hooks, "seg": seg, "tiktok": tiktok}, outputs)
    assert tiktok.faults.fired == 2 and tiktok.effective_events
    _file_outputs(tmp_path, outputs)
    outputs.add("log", caplog.text)
    outputs.texts += [(f"log {r.name}", r.getMessage()) for r in caplog.records]
    _scan(outputs)


def _delivered(
    meta: MetaFake, hooks: WebhookFake, seg: SegmentFake, root: Path, google: GoogleDataManagerFake
) -> list[str]:
    """What serve has not yet delivered (Meta and Google after their retry, the webhook's
    refused batch)."""
    checks = {
        "meta members": AUDIENCE in meta.audiences() and bool(meta.members(AUDIENCE)),
        "google members": AUDIENCE in google.user_lists() and bool(google.members(AUDIENCE)),
        "webhook request": len(hooks.log) > 0,
        "segment messages": bool(seg.messages),
        "exported snapshot": (root / "exports" / AUDIENCE / "snapshot.csv").is_file(),
    }
    return [name for name, done in checks.items() if not done]


def _on_tiktok(tiktok: TiktokFake) -> list[str]:
    """What serve has not yet delivered to TikTok (after its refused first mapping)."""
    done = AUDIENCE in tiktok.audiences() and bool(tiktok.members(AUDIENCE))
    return [] if done else ["tiktok members"]


def _figures_are_true(engine: Engine, meta: MetaFake, meta_raw: MetaFake) -> None:
    """Members reached Meta hashed; the opt-out account refused exactly the phone-like ids,
    counted as failed in status with a reason naming the kind."""
    user_ids = [m.user_id or "" for m in engine.members(AUDIENCE) if not m.holdout]
    assert user_ids, "nobody is in the audience"
    assert meta.members(AUDIENCE, "EXTERN_ID") == {_sha(user_id) for user_id in user_ids}
    refused = [user_id for user_id in user_ids if user_id.isdigit()]
    lines = {(s.destination, s.audience): s for s in engine.sync_status()}
    line = lines[("meta_raw_ids", AUDIENCE)]
    assert line.failed == len(refused) > 0
    assert line.acknowledged == len(user_ids) - len(refused)
    reasons = engine.store.query(  # type: ignore[attr-defined]
        "SELECT DISTINCT reason FROM delivery_log WHERE destination = 'meta_raw_ids' "
        "AND outcome = 'rejected'"
    )
    assert [r for (r,) in reasons] == [
        "user_id looks like a phone number: refusing to send it unhashed as EXTERN_ID; "
        "remove hash_external_id: false from the destination"
    ]
    sent = meta_raw.members(AUDIENCE, "EXTERN_ID")
    assert sent == set(user_ids) - set(refused)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _store_outputs(engine: Engine, outputs: Outputs) -> None:
    """Every row of the delivery tables and the error column of the others."""
    queries = {
        "dead_letters": "SELECT * FROM dead_letters",
        "delivery_log": "SELECT * FROM delivery_log",
        "batch_results": "SELECT * FROM batch_results",
        "sync_runs": "SELECT * FROM sync_runs",
        "sync_batches.last_error": "SELECT last_error FROM sync_batches",
        "destination_state.reason": "SELECT reason FROM destination_state",
    }
    for table, sql in queries.items():
        rows = engine.store.query(sql)  # type: ignore[attr-defined]
        outputs.texts += [(table, repr(row)) for row in rows]
    dead = engine.store.query("SELECT reason FROM dead_letters")  # type: ignore[attr-defined]
    assert len(dead) >= 3, "the 400s did not reach dead letters"
    assert all("<phone>" in reason and "<email>" in reason for (reason,) in dead), dead
    for status in engine.sync_status():
        outputs.add(f"status {status.destination}", repr(status))


def _request_outputs(fakes: dict[str, FakeServer], outputs: Outputs) -> None:
    """Every request each fake captured, faulted ones included."""
    for name, fake in fakes.items():
        captured = list(fake.log)
        assert captured, f"{name} received nothing"
        outputs.texts += [(f"request to {name}", _request_text(name, c)) for c in captured]


def _request_text(name: str, captured: Captured) -> str:
    if name not in OWN_DATA:
        return captured.text()
    head = f"{captured.method} {captured.path}?{captured.query}\n" + "\n".join(
        f"{key}: {value}" for key, value in captured.headers
    )
    body = json.dumps(_without(captured.json(), OWN_DATA[name]))
    return head + "\n" + body + "\n" + unquote_plus(head)


def _file_outputs(root: Path, outputs: Outputs) -> None:
    """Every dry-run file and every exported file (csv text, parquet cells)."""
    dry = sorted((root / ".cohortsync" / "dry-run").rglob("*.json"))
    assert {path.parent.name for path in dry} >= {"meta_ads", "hooks", "seg", "exports"}
    for path in dry:
        document = json.loads(path.read_text(encoding="utf-8"))
        name = path.parent.name
        if name == "warehouse":
            continue  # EXCLUDED["warehouse"]
        if name in OWN_DATA:
            document = _without(document, OWN_DATA[name])
        outputs.add(f"dry run {path.name}", json.dumps(document))
    for path in sorted((root / ".cohortsync" / "diagnostics").glob("*.json")):
        outputs.add(f"diagnostics {path.name}", path.read_text(encoding="utf-8"))
    exported = sorted((root / "exports").rglob("*.*"))
    assert any(path.suffix == ".parquet" for path in exported)
    for path in exported:
        if path.suffix == ".csv":
            outputs.add(str(path), path.read_text(encoding="utf-8"))
        elif path.suffix == ".parquet":
            outputs.add(str(path), repr(pq.read_table(path).to_pylist()))


def _without(value: Any, keys: frozenset[str]) -> Any:
    """`value` with every mapping's `keys` removed, at any depth."""
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(item, keys) for item in value]
    return value


def _scan(outputs: Outputs) -> None:
    """No output holds any form of any seeded identifier."""
    people = [*PEOPLE_SEEDED, NOBODY]
    needles = sorted({n for p in people for n in p.needles()}, key=len, reverse=True)
    assert len(outputs.texts) > 100
    leaks: list[str] = []
    for where, text in outputs.texts:
        lowered = text.lower()
        views = (lowered, unquote_plus(lowered))
        hits = [needle for needle in needles if any(needle in view for view in views)]
        if hits:
            leaks.append(f"{where}: {hits[:3]} in {text[:200]!r}")
    assert leaks == [], "\n".join(leaks[:20])
