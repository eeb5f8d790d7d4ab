"""The dashboard at /ui in headless Chromium, against a real uvicorn server over a demo shop.

Every page must load with no console error and no failed request, draw its charts, and the
retry button must bring dead letters to the destination (a webhook fake that refused them
first). Screenshots of every page go under the test's tmp_path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from cohortsync.engine import Engine
from tests.conftest import WRITE_KEY, LiveServer
from tests.fakes.webhook import WebhookFake
from tests.server.chromium import browser_missing, launched_chromium

ADMIN_TOKEN = "admin-token-for-the-dashboard-0123"
AUDIENCES = ("cio_cart_abandon_6h", "cio_engaged_14d", "cio_recent_purch_7d_suppress")

PROJECT = """\
store: .cohortsync/store.duckdb
identity: {{primary: email, secondary: [phone], default_region: US}}
sources:
  web: {{write_key: {write_key}}}
admin:
  tokens: [{token}]
segments:
  recent_purchaser_7d: {{event: order_completed, within: 7d}}
  engaged_14d:
    any:
      - {{event: product_viewed, within: 14d}}
      - {{event: added_to_cart, within: 14d}}
  cart_abandon_6h:
    all:
      - {{event: added_to_cart, between: [6h, 2h]}}
      - {{event: order_completed, since: added_to_cart, count: {{eq: 0}}}}
audiences:
  cio_cart_abandon_6h:
    segment: cart_abandon_6h
    exclude: [recent_purchaser_7d]
    holdout: {{percent: 10}}
    refresh: realtime
    destinations: [hook]
    owner: lifecycle@shop.example.com
    description: Added to cart 2 to 6 hours ago with no order since.
  cio_engaged_14d:
    segment: engaged_14d
    holdout: {{percent: 50}}
    refresh: 1d
    destinations: [hook, files]
    owner: retention@shop.example.com
  cio_recent_purch_7d_suppress:
    segment: recent_purchaser_7d
    refresh: realtime
    destinations: [hook, files]
    owner: lifecycle@shop.example.com
destinations:
  hook: {{type: webhook, url: "{hook_url}", secret: "{secret}"}}
  files: {{type: files, path: exports, platform: meta}}
conversions:
  - {{event: order_completed, as: Purchase, value: revenue, currency: USD, destinations: [hook]}}
"""


@dataclass
class Shop:
    """The served demo shop: its server, engine, the webhook fake, and the dead letters the
    fake refused before the server started (audience, profile id)."""

    server: LiveServer
    engine: Engine
    hook: WebhookFake
    dead: set[tuple[str, str]] = field(default_factory=set)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, driven by Playwright (each test opens a fresh context)."""
    yield from launched_chromium(browser_missing())


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """A demo shop computed and synced once while the webhook refused everything (so its
    records are dead letters), then the webhook healed and `serve`'s app started over it."""
    folder = tmp_path_factory.mktemp("dashboard")
    with WebhookFake().serving() as hook:
        text = PROJECT.format(
            write_key=WRITE_KEY, token=ADMIN_TOKEN, hook_url=f"{hook.url}/webhook",
            secret=hook.secret,
        )  # fmt: skip
        (folder / "cohortsync.yml").write_text(text, encoding="utf-8")
        with Engine.open(folder) as engine:
            now = datetime.now(UTC)
            engine.load_demo(400, 7, now)
            for weeks_ago in (3, 2, 1, 0):  # a history: entries with conversion windows passed
                engine.compute(now - timedelta(weeks=weeks_ago))
            spend = folder / "spend.csv"
            days = [(now - timedelta(days=d)).date() for d in range(21)]
            spend.write_text(
                "date,destination,audience,spend,currency\n"
                + "".join(f"{d},hook,cio_engaged_14d,12.50,USD\n" for d in days),
                encoding="utf-8",
            )
            engine.ingest_spend(spend)
            hook.faults.fail(400, times=10_000, body={"error": "schema mismatch"})
            engine.sync()
            hook.faults.clear()
            rows = engine.store.query(  # type: ignore[attr-defined]
                "SELECT audience, profile_id FROM dead_letters "
                "WHERE destination = 'hook' AND kind = 'changes' AND op = 'add'"
            )
            server = LiveServer(engine)
            server.start()
            try:
                yield Shop(server, engine, hook, {(str(a), str(p)) for a, p in rows})
            finally:
                server.stop()


class Watched:
    """A browser page whose console errors, failed requests and error responses are kept."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
            ),
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on(
            "requestfailed",
            lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"),
        )
        self.page.on(
            "response",
            lambda r: (
                self.problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None
            ),
        )

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    opened = Watched(browser)
    yield opened
    opened.close()


def log_in(page: Any, url: str, token: str = ADMIN_TOKEN) -> None:
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")  # the landing page's parts too, before moving on


def check_charts(page: Any) -> dict[str, bool]:
    """Every chart on the page has a size and either holds drawn marks or says it has no data;
    {its label: whether it drew marks}."""
    charts = page.locator("svg.chart")
    found = {}
    for i in range(charts.count()):
        chart = charts.nth(i)
        box = chart.bounding_box()
        label = str(chart.get_attribute("aria-label"))
        assert box is not None and box["width"] > 0 and box["height"] > 0, label
        marks = chart.locator("path.line, rect.bar, g.estimate circle")
        if marks.count() == 0:
            assert chart.locator("text.empty").count() == 1, f"{label}: nothing drawn or said"
        else:
            assert marks.first.bounding_box() is not None, f"{label}: marks not rendered"
        found[label] = marks.count() > 0
    return found


def wait_until(page: Any, done: Callable[[], bool], seconds: float = 30) -> bool:
    """Poll with page.wait_for_timeout (Playwright's sync API delivers events only while it
    is called; time.sleep would starve it) until `done` or the deadline."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() >= deadline:
            return False
        page.wait_for_timeout(200)
    return True


def test_a_page_without_login_goes_to_the_login_page_and_back(shop: Shop, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{shop.server.url}/ui/audiences/cio_engaged_14d")
    assert urlsplit(page.url).path == "/ui/login"
    assert page.locator("#token").is_visible()
    log_in(page, shop.server.url)
    assert urlsplit(page.url).path == "/ui/audiences/cio_engaged_14d"
    assert page.locator("h1").inner_text() == "cio_engaged_14d"
    cookie = next(c for c in watched.context.cookies() if c["name"] == "cohortsync_session")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ui")
    assert watched.problems == []


def test_a_wrong_token_is_refused_with_a_message(shop: Shop, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{shop.server.url}/ui/")
    log_in(page, shop.server.url, token=WRITE_KEY)  # a write key never opens the dashboard
    assert urlsplit(page.url).path == "/ui/login"
    assert "not an admin token" in page.locator("[role=alert]").inner_text()
    page.goto(f"{shop.server.url}/ui/")
    assert urlsplit(page.url).path == "/ui/login"  # still no session


def test_every_page_loads_cleanly_and_draws_its_charts(
    shop: Shop, watched: Watched, tmp_path: Path
) -> None:
    page, base = watched.page, shop.server.url
    page.goto(f"{base}/ui/")
    log_in(page, base)
    email = shop.engine.store.query(  # type: ignore[attr-defined]
        "SELECT value FROM identities WHERE kind = 'email' ORDER BY value LIMIT 1"
    )[0][0]
    pages = {
        "overview": "/ui/",
        **{a: f"/ui/audiences/{a}" for a in AUDIENCES},
        "hook": "/ui/destinations/hook",
        "files": "/ui/destinations/files",
        "profile": "/ui/profile",
        "report": "/ui/report",
    }
    drawn = {}
    for name, path in pages.items():
        response = page.goto(base + path)
        assert response is not None and response.status == 200, path
        if name == "profile":  # looked up by a POST: the email stays out of the URL
            page.fill("#identifier", f"email:{email}")
            page.click("form.lookup button")
            page.wait_for_load_state("load")
            assert email in page.locator("table").first.inner_text()
        page.wait_for_load_state("networkidle")
        assert page.locator(".loading").count() == 0, f"{path}: a part never loaded"
        drawn[name] = check_charts(page)
        page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    counts = {name: len(found) for name, found in drawn.items()}
    assert counts == {
        "overview": 1, **dict.fromkeys(AUDIENCES, 2), "hook": 0, "files": 0, "profile": 0,
        "report": 7,  # lift, discounts, latency, and per audience with a holdout: curve, CAC
    }  # fmt: skip
    assert all(drawn["overview"].values())
    assert all(all(drawn[a].values()) for a in AUDIENCES)
    report = drawn["report"]
    assert report["Lift (pp) with its 95% interval"]
    assert report["cio_engaged_14d: converted by day since entry"]
    assert report["cio_engaged_14d: USD per incremental conversion"] or (
        "unbounded" in page.content()
    )
    assert page.evaluate("typeof window.htmx") == "object"  # the vendored build loaded
    assert watched.problems == []
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f"{n}.png" for n in pages)


def test_the_overview_shows_the_stored_figures(shop: Shop, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{shop.server.url}/ui/")
    log_in(page, shop.server.url)
    sizes = dict(
        shop.engine.store.query(  # type: ignore[attr-defined]
            "SELECT name, count(*) FROM memberships WHERE kind = 'audience' "
            "AND exited_at IS NULL GROUP BY name"
        )
    )
    for audience in AUDIENCES:
        row = page.locator("tr", has=page.locator(f"a[href='/ui/audiences/{audience}']"))
        assert row.locator("td").nth(1).inner_text() == f"{sizes.get(audience, 0):,}"
    hook = page.locator("tr", has=page.locator("a[href='/ui/destinations/hook']"))
    assert hook.locator("td").nth(2).inner_text() == "dead letters"


def test_a_dead_letter_retried_from_the_dashboard_reaches_the_destination(
    shop: Shop, watched: Watched, tmp_path: Path
) -> None:
    assert shop.dead, "the refused sync left no dead letters to retry"
    page = watched.page
    page.goto(f"{shop.server.url}/ui/destinations/hook")
    log_in(page, shop.server.url)
    assert int(page.locator("#dead-count").inner_text().replace(",", "")) > 0

    def received() -> set[tuple[str, str]]:
        return {
            (body["data"]["audience"], change["profile_id"])
            for _, body in shop.hook.applied
            if body["type"] == "audience.changes"
            for change in body["data"]["changes"]
            if change["operation"] == "add"
        }

    assert not shop.dead <= received()  # not delivered before the click
    page.click("#retry-dead")
    assert wait_until(page, lambda: shop.dead <= received()), shop.dead - received()
    assert wait_until(page, lambda: page.locator("[role=status]").count() == 1)
    assert "dead letters queued again" in page.locator("[role=status]").inner_text()
    assert page.locator("#dead-count").inner_text() == "0"
    page.screenshot(path=str(tmp_path / "retried.png"), full_page=True)
    assert watched.problems == []


def test_an_action_from_another_site_is_refused(shop: Shop) -> None:
    with httpx.Client(base_url=shop.server.url, timeout=30) as client:
        logged = client.post("/ui/login", data={"token": ADMIN_TOKEN, "next": "/ui/"})
        assert logged.status_code == 303
        page = client.get("/ui/destinations/hook")
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        forged = client.post(
            "/ui/destinations/hook/retry",
            data={"csrf": csrf},
            headers={"origin": "https://evil.example", "hx-request": "true"},
        )
        assert forged.status_code == 403
        no_token = client.post(
            "/ui/destinations/hook/retry",
            data={"csrf": "guess"},
            headers={"origin": shop.server.url, "hx-request": "true"},
        )
        assert no_token.status_code == 403


def test_login_goes_back_only_to_a_dashboard_page(shop: Shop) -> None:
    with httpx.Client(base_url=shop.server.url, timeout=30) as client:
        away = client.post("/ui/login", data={"token": ADMIN_TOKEN, "next": "//evil.example/x"})
        assert (away.status_code, away.headers["location"]) == (303, "/ui/")
        back = client.post("/ui/login", data={"token": ADMIN_TOKEN, "next": "/ui/report"})
        assert back.headers["location"] == "/ui/report"


def test_an_action_without_a_session_is_refused(shop: Shop) -> None:
    with httpx.Client(base_url=shop.server.url, timeout=30) as client:
        answer = client.post(
            "/ui/destinations/hook/retry", data={"csrf": "x"}, headers={"origin": shop.server.url}
        )
        assert answer.status_code == 401
        assert "log in again" in answer.text


def test_a_bad_identifier_is_explained_on_the_profile_page(shop: Shop, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{shop.server.url}/ui/profile")
    log_in(page, shop.server.url)
    page.fill("#identifier", "email:nobody.here@example.com")
    page.click("form.lookup button")
    page.wait_for_load_state("load")
    alert = page.locator("[role=alert]").inner_text()
    assert alert.startswith("no profile has email") and "nobody.here" not in alert  # masked
    page.fill("#identifier", "fax:123")
    page.click("form.lookup button")
    page.wait_for_load_state("load")
    assert "unknown identifier kind 'fax'" in page.locator("[role=alert]").inner_text()


def test_a_part_of_a_page_asked_after_logout_sends_the_browser_to_log_in(shop: Shop) -> None:
    with httpx.Client(base_url=shop.server.url, timeout=30) as client:
        part = client.get(
            "/ui/overview/destinations",
            headers={"hx-request": "true", "hx-current-url": f"{shop.server.url}/ui/"},
        )
        assert part.status_code == 401
        assert part.headers["hx-redirect"] == "/ui/login?next=%2Fui%2F"


def test_logging_out_closes_the_dashboard_again(shop: Shop, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{shop.server.url}/ui/")
    log_in(page, shop.server.url)
    assert page.locator("h1").inner_text() == "Overview"
    page.click("form.logout button")
    page.wait_for_load_state("load")
    assert urlsplit(page.url).path == "/ui/login"
    page.goto(f"{shop.server.url}/ui/report")
    assert urlsplit(page.url).path == "/ui/login"
