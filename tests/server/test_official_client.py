"""Segment's own Python library, unchanged, pointed at cohortsync: everything it sends is kept once.

A team switching from Segment changes only `host`; these tests hold us to that.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from segment.analytics.client import Client

from cohortsync.engine import Engine
from tests.conftest import PROJECT_YAML, WRITE_KEY, LiveServer

USERS = 300
SECOND_US = 1_000_000


class ErrorLog:
    """An `on_error` callback that records what the client reports."""

    def __init__(self) -> None:
        self.errors: list[tuple[Exception, int]] = []

    def __call__(self, error: Exception, batch: list[dict[str, Any]]) -> None:
        self.errors.append((error, len(batch)))


@pytest.fixture
def errors() -> ErrorLog:
    return ErrorLog()


@pytest.fixture
def make_client(live_server: LiveServer, errors: ErrorLog) -> Iterator[Callable[..., Client]]:
    """Build Segment clients for the live server; each is shut down at the end of the test."""
    clients: list[Client] = []

    def build(**options: Any) -> Client:
        options.setdefault("write_key", WRITE_KEY)
        client = Client(host=live_server.url, on_error=errors, **options)
        clients.append(client)
        return client

    yield build
    for client in clients:
        if client.consumers:
            client.join()


def email_of(i: int) -> str | None:
    """Two users in three identify with an email; some write it in mixed case."""
    if i % 3 == 0:
        return None
    return f"User{i}@Example.com" if i % 2 else f"user{i}@example.com"


def send_shop_traffic(client: Client) -> tuple[list[str], Counter[str]]:
    """10 calls for each of USERS users, interleaved across users; returns ids and types sent."""
    calls: list[Callable[[int], tuple[bool, dict[str, Any]]]] = [
        lambda i: client.page(anonymous_id=f"anon-{i}", name="Home", properties={"path": "/"}),
        lambda i: client.track(
            anonymous_id=f"anon-{i}", event="Product Viewed", properties={"sku": f"sku-{i % 7}"}
        ),
        lambda i: client.identify(
            user_id=f"user-{i}",
            traits={"name": f"User {i}", **({"email": email} if (email := email_of(i)) else {})},
        ),
        lambda i: client.alias(previous_id=f"anon-{i}", user_id=f"user-{i}"),
        lambda i: client.group(
            user_id=f"user-{i}", group_id=f"org-{i % 20}", traits={"plan": "pro"}
        ),
        lambda i: client.track(user_id=f"user-{i}", event="Product Added", properties={"qty": 1}),
        lambda i: client.page(user_id=f"user-{i}", name="Cart"),
        lambda i: client.track(
            user_id=f"user-{i}", event="Order Completed", properties={"revenue": i + 0.5}
        ),
        lambda i: client.track(user_id=f"user-{i}", event="Review Written"),
        lambda i: client.page(user_id=f"user-{i}", name="Thanks"),
    ]
    message_ids: list[str] = []
    types: Counter[str] = Counter()
    for call in calls:
        for i in range(USERS):
            queued, message = call(i)
            assert queued, "the client's queue refused a message"
            message_ids.append(message["messageId"])
            types[message["type"]] += 1
    return message_ids, types


def assert_stored_exactly_once(engine: Engine, message_ids: list[str], types: Counter[str]) -> None:
    rows = engine.store.query(  # type: ignore[attr-defined]
        "SELECT count(*), count(DISTINCT message_id) FROM events"
    )
    assert rows[0] == (len(message_ids), len(message_ids))
    stored = {row[0] for row in engine.store.query("SELECT message_id FROM events")}  # type: ignore[attr-defined]
    assert stored == set(message_ids)
    assert engine.stats()["events"]["by_type"] == dict(types)
    assert engine.stats()["quarantined"]["total"] == 0


@dataclass
class TrafficRun:
    """One run of the shop traffic through the official client into its own server."""

    engine: Engine
    message_ids: list[str]
    types: Counter[str]
    errors: ErrorLog


def run_traffic(tmp: Path, **options: Any) -> Iterator[TrafficRun]:
    (tmp / "cohortsync.yml").write_text(PROJECT_YAML, encoding="utf-8")
    with Engine.open(tmp) as engine:
        server = LiveServer(engine)
        server.start()
        try:
            errors = ErrorLog()
            client = Client(write_key=WRITE_KEY, host=server.url, on_error=errors, **options)
            message_ids, types = send_shop_traffic(client)
            client.flush()
            client.shutdown()
            yield TrafficRun(engine, message_ids, types, errors)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def background_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrafficRun]:
    """The client as most apps run it: defaults, background thread (sync_mode=False)."""
    yield from run_traffic(tmp_path_factory.mktemp("background"))


@pytest.fixture(scope="module")
def gzip_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrafficRun]:
    """The same traffic with gzip=True."""
    yield from run_traffic(tmp_path_factory.mktemp("gzip"), gzip=True)


@pytest.mark.parametrize("run_name", ["background_run", "gzip_run"], ids=["plain", "gzip"])
def test_official_client_traffic_is_stored_exactly_once(
    run_name: str, request: pytest.FixtureRequest
) -> None:
    run: TrafficRun = request.getfixturevalue(run_name)
    assert run.errors.errors == []
    assert len(run.message_ids) == len(set(run.message_ids)) == 10 * USERS
    assert dict(run.types) == {
        "page": 900,
        "track": 1_200,
        "identify": 300,
        "alias": 300,
        "group": 300,
    }
    assert_stored_exactly_once(run.engine, run.message_ids, run.types)


def test_official_client_identify_makes_profiles_findable_by_email(
    background_run: TrafficRun,
) -> None:
    engine = background_run.engine
    with_email = [i for i in range(USERS) if email_of(i)]
    assert len(with_email) == 200
    for i in with_email:
        profile = engine.find_profile(f"email:{email_of(i)}")
        identifiers = {(item["kind"], item["value"]) for item in profile.identifiers}
        assert ("user_id", f"user-{i}") in identifiers, i
        assert ("email", f"user{i}@example.com") in identifiers, i
        assert profile.traits.get("name") == f"User {i}"


def test_official_client_alias_joins_anonymous_history_to_the_user(
    background_run: TrafficRun,
) -> None:
    engine = background_run.engine
    for i in range(0, USERS, 7):
        by_user = engine.find_profile(f"user_id:user-{i}")
        by_anonymous_id = engine.find_profile(f"anonymous_id:anon-{i}")
        assert by_anonymous_id.profile_id == by_user.profile_id, i


def test_official_client_event_times_are_kept_when_clocks_agree(background_run: TrafficRun) -> None:
    rows = background_run.engine.store.query(  # type: ignore[attr-defined]
        'SELECT max(abs(epoch_us("timestamp") - epoch_us(original_timestamp))), '
        "count(sent_at) FROM events"
    )
    largest_shift, with_sent_at = rows[0]
    assert with_sent_at == 10 * USERS
    assert largest_shift < 10 * SECOND_US


def test_official_client_in_sync_mode_stores_each_call(
    make_client: Callable[..., Client], errors: ErrorLog, engine: Engine
) -> None:
    client = make_client(sync_mode=True)
    message_ids = []
    for i in range(10):
        for queued, message in (
            client.identify(user_id=f"user-{i}", traits={"email": f"user{i}@example.com"}),
            client.track(user_id=f"user-{i}", event="Order Completed"),
        ):
            assert queued
            message_ids.append(message["messageId"])
    assert errors.errors == []
    assert_stored_exactly_once(engine, message_ids, Counter({"identify": 10, "track": 10}))
    assert engine.find_profile("email:user3@example.com").profile_id == (
        engine.find_profile("user_id:user-3").profile_id
    )


def test_official_client_reports_a_wrong_write_key_without_retrying_forever(
    make_client: Callable[..., Client], errors: ErrorLog, engine: Engine
) -> None:
    client = make_client(write_key="wk_not_a_key")
    client.track(user_id="u1", event="Order Completed")
    client.flush()
    client.shutdown()

    [(error, batch_size)] = errors.errors
    assert batch_size == 1
    assert getattr(error, "status", None) == 401
    assert getattr(error, "code", None) == "invalid_write_key"
    assert engine.stats()["events"]["total"] == 0
