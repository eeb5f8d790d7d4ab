"""The Postgres store keeps the DuckDB store's promises, and keeps them with several writers.

Same history in, same profiles, identifiers, merges, traits, quarantine and membership history
out; and when two threads or two processes store overlapping identities at once, every
identifier still has one owner, every event is stored once, and merges stay consistent.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from cohortsync.config.models import IdentityConfig
from cohortsync.engine import Engine
from cohortsync.events.pipeline import IngestResult, store_messages
from cohortsync.events.validate import validate_message
from cohortsync.store.base import AlreadyStoredError, ResolvedBatch, StaleIdentityError
from cohortsync.store.postgres_store import PostgresStore
from cohortsync.store.records import IdentityChanges, Message, RealtimeInterest, Rejection
from cohortsync.sync.memberships import record_compute
from tests.conftest import PROJECT_YAML
from tests.postgres import postgres_schema
from tests.store.test_duckdb_store import history

IDENTITY = IdentityConfig()
T0 = 1_777_630_000_000_000  # 2026-05-01, µs
MINUTE = 60_000_000


@pytest.fixture
def url() -> Iterator[str]:
    with postgres_schema() as schema_url:
        yield schema_url


@pytest.fixture
def store(url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(url)
    opened.migrate()
    yield opened
    opened.close()


def messages(raws: list[dict[str, Any]]) -> list[Message]:
    """Validated messages (every raw one must be valid)."""
    checked = [
        validate_message(raw, source="api", received_at_us=T0, origin=f"test#{i}")
        for i, raw in enumerate(raws)
    ]
    assert all(isinstance(m, Message) for m in checked), checked
    return [m for m in checked if isinstance(m, Message)]


def ingest(store: PostgresStore, raws: list[dict[str, Any]]) -> IngestResult:
    return store_messages(store, IDENTITY, messages(raws))


def at(minute: int) -> str:
    return datetime.fromtimestamp((T0 + minute * MINUTE) / 1e6, UTC).isoformat()


# --- the same results as DuckDB ------------------------------------------------------------------


def _utc(value: Any) -> Any:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value


def outcome(engine: Engine) -> dict[str, Any]:
    """What a user can see of a store, in a form both engines share (sorted in Python)."""
    query = engine.store.query  # type: ignore[attr-defined]
    view = engine.find_profile("email:gil@example.com")
    on_duckdb = engine.store.dialect == "duckdb"  # it hands JSON back as text
    return {
        "stats": engine.stats(),
        "identities": sorted(query("SELECT kind, value, profile_id FROM identities")),
        "events": sorted(query("SELECT message_id, canonical_profile_id FROM profile_events")),
        "profiles": sorted(query("SELECT profile_id, merged_into FROM profiles")),
        "merges": sorted(query("SELECT from_profile, into_profile, message_id FROM merges")),
        "traits": sorted(
            (p, n, json.loads(v) if on_duckdb else v)
            for p, n, v in query("SELECT profile_id, name, value FROM profile_traits")
        ),
        "rejected": sorted(query("SELECT message_id, kind, reason FROM identifier_rejections")),
        "quarantine": sorted(query("SELECT quarantine_id, origin, reason FROM quarantine")),
        "profile": {
            "id": view.profile_id,
            "seen": (_utc(view.first_seen), _utc(view.last_seen)),
            "identifiers": [
                (i["kind"], i["value"], _utc(i["first_seen"])) for i in view.identifiers
            ],
            "traits": view.traits,
            "merges": [{k: _utc(v) for k, v in m.items()} for m in view.merges],
            "events": [{k: _utc(v) for k, v in e.items()} for e in view.recent_events],
        },
    }


def test_a_history_of_merges_and_rejections_ends_the_same_on_postgres_as_on_duckdb(
    tmp_path: Path, url: str
) -> None:
    results = []
    for name, location in (("duckdb", ".cohortsync/store.duckdb"), ("postgres", url)):
        folder = tmp_path / name
        folder.mkdir()
        text = PROJECT_YAML.replace("store: .cohortsync/store.duckdb", f"store: {location}")
        (folder / "cohortsync.yml").write_text(text, encoding="utf-8")
        with Engine.open(folder) as engine:
            first = engine.ingest_messages(history())
            again = engine.ingest_messages(history())
            results.append((first, again, outcome(engine)))

    (duck_first, duck_again, on_duckdb), (pg_first, pg_again, on_postgres) = results
    assert pg_first == duck_first
    assert pg_again == duck_again
    assert on_postgres == on_duckdb
    assert on_postgres["stats"]["profiles"] == {"total": 2, "merged_away": 2}


# --- dedup ---------------------------------------------------------------------------------------


def _batch(message: Message, profile_id: str, new_key: tuple[str, str]) -> ResolvedBatch:
    changes = IdentityChanges(
        new_identities=[(new_key[0], new_key[1], profile_id, message.timestamp_us)],
        new_profiles={profile_id},
    )
    return ResolvedBatch([message], [profile_id], changes, {})


def test_a_batch_with_a_stored_message_raises_already_stored_and_writes_nothing(
    store: PostgresStore,
) -> None:
    first, fresh = messages(
        [
            {"type": "track", "messageId": "m-1", "anonymousId": "a1", "event": "Viewed"},
            {"type": "track", "messageId": "m-2", "anonymousId": "a2", "event": "Viewed"},
        ]
    )
    assert store.commit_batch(_batch(first, "p_1", ("anonymous_id", "a1")), []) == 1
    resent = _batch(first, "p_2", ("anonymous_id", "a2"))
    both = ResolvedBatch([fresh, first], ["p_2", "p_2"], resent.changes, {})
    bad = Rejection("invalid_json", "not JSON", "test#9", "{")

    with pytest.raises(AlreadyStoredError) as raised:
        store.commit_batch(both, [bad])

    assert raised.value.message_ids == {"m-1"}
    assert store.query("SELECT message_id, profile_id FROM events") == [("m-1", "p_1")]
    assert store.query("SELECT value FROM identities") == [("a1",)]
    assert store.query("SELECT count(*) FROM quarantine") == [(0,)]


def test_resent_messages_are_counted_as_duplicates_and_stored_once(store: PostgresStore) -> None:
    raws: list[dict[str, Any]] = [
        {"type": "identify", "messageId": "i-1", "userId": "u1", "traits": {"plan": "free"}},
        {"type": "track", "messageId": "t-1", "userId": "u1", "event": "Viewed"},
    ]
    assert ingest(store, raws) == IngestResult(2, 2, 0, 0)
    again = ingest(
        store, [*raws, {"type": "track", "messageId": "t-2", "userId": "u1", "event": "X"}]
    )
    assert again == IngestResult(3, 1, 2, 0)
    assert store.stats()["events"]["total"] == 3


# --- reads ---------------------------------------------------------------------------------------


def test_merged_away_profile_id_finds_its_survivor_and_its_identifiers(
    store: PostgresStore,
) -> None:
    ingest(
        store,
        [
            {"type": "track", "messageId": "1", "anonymousId": "a1", "event": "V",
             "timestamp": at(1)},
            {
                "type": "identify",
                "messageId": "2",
                "userId": "u1",
                "traits": {"email": "Ann@Example.com", "phone": "415 555 2671"},
                "timestamp": at(2),
            },
            {"type": "identify", "messageId": "3", "userId": "u1", "anonymousId": "a1",
             "timestamp": at(3)},
        ],
    )  # fmt: skip
    survivor = store.find_profile("user_id", "u1")
    merged = store.query("SELECT profile_id FROM profiles WHERE merged_into IS NOT NULL")
    assert survivor is not None and len(merged) == 1

    assert store.find_profile("profile_id", merged[0][0]) == survivor
    assert store.find_profile("anonymous_id", "a1") == survivor
    assert store.find_profile("email", "nobody@example.com") is None
    assert store.identifiers([merged[0][0], survivor, "p_unknown"], ["email", "phone"]) == {
        merged[0][0]: {"email": "ann@example.com", "phone": "+14155552671"},
        survivor: {"email": "ann@example.com", "phone": "+14155552671"},
    }
    view = store.profile(survivor, recent=2)
    assert view is not None
    assert [e["message_id"] for e in view.recent_events] == ["3", "2"]
    assert store.profile(merged[0][0]) is None


def test_compiled_sql_runs_as_written_and_flags_are_read_in_one_query(
    store: PostgresStore,
) -> None:
    ingest(store, [{"type": "track", "messageId": "1", "userId": "u1", "event": "Bought"}])
    ingest(store, [{"type": "track", "messageId": "2", "userId": "u2", "event": "Viewed"}])
    flags = (
        "SELECT canonical_profile_id AS profile_id, bool_or(event = 'Bought') AS buyer, "
        "bool_or(event = 'Viewed') AS viewer FROM profile_events GROUP BY 1"
    )
    u1, u2 = store.find_profile("user_id", "u1"), store.find_profile("user_id", "u2")

    found = store.flagged_members(flags, {"buyers": "buyer", "viewers": "viewer"})
    staged = store.profile_ids(
        f"CREATE TEMP TABLE flagged AS {flags};\nSELECT profile_id FROM flagged WHERE buyer"
    )

    assert found == {"buyers": [u1], "viewers": [u2]}
    assert staged == [u1]
    assert store.profile_ids("SELECT profile_id FROM flagged WHERE viewer") == [u2]


def test_stored_messages_mark_their_profiles_pending_once_per_profile_a_version_each(
    store: PostgresStore,
) -> None:
    ingest(store, [{"type": "track", "messageId": "1", "userId": "u1", "event": "A"}])
    first = dict(store.query("SELECT profile_id, version FROM realtime_pending"))
    ingest(
        store,
        [
            {"type": "track", "messageId": "2", "userId": "u1", "event": "A"},
            {"type": "track", "messageId": "3", "userId": "u1", "event": "B"},
            {"type": "track", "messageId": "4", "userId": "u2", "event": "A"},
        ],
    )
    u1, u2 = store.find_profile("user_id", "u1"), store.find_profile("user_id", "u2")
    marks = dict(store.query("SELECT profile_id, version FROM realtime_pending"))
    assert sorted(marks) == sorted([u1, u2])  # one mark per profile
    assert marks[u1] > first[u1]  # a new event moves the version on
    assert len(set(marks.values())) == 2  # versions never repeat, across profiles too

    # irrelevant events mark nothing
    store.watch(RealtimeInterest(frozenset({"only_this"})))
    ingest(store, [{"type": "track", "messageId": "5", "userId": "u2", "event": "A"}])
    assert dict(store.query("SELECT profile_id, version FROM realtime_pending"))[u2] == marks[u2]


# --- membership history --------------------------------------------------------------------------


def computed(*members: tuple[str, str, bool]) -> pa.Table:
    """(name, profile_id, holdout) rows as a compute hands them over (all segments)."""
    return pa.table(
        {
            "kind": pa.array(["segment"] * len(members), pa.string()),
            "name": pa.array([m[0] for m in members], pa.string()),
            "profile_id": pa.array([m[1] for m in members], pa.string()),
            "holdout": pa.array([m[2] for m in members], pa.bool_()),
        }
    )


def test_membership_history_records_entries_exits_reentries_and_holdout_changes(
    store: PostgresStore,
) -> None:
    t1, t2, t3 = T0, T0 + MINUTE, T0 + 2 * MINUTE
    assert store.last_compute_as_of() is None
    one = record_compute(
        store.sql, computed(("vip", "a", False), ("vip", "b", False)), t1, time.perf_counter()
    )
    two = record_compute(
        store.sql, computed(("vip", "b", True), ("vip", "c", False)), t2, time.perf_counter()
    )
    three = record_compute(
        store.sql,
        computed(("vip", "a", False), ("vip", "b", True), ("vip", "c", False)),
        t3,
        time.perf_counter(),
    )

    key = ("segment", "vip")
    assert (one.entered, one.exited) == ({key: 2}, {})
    assert (two.entered, two.exited) == ({key: 1}, {key: 1})
    assert (three.entered, three.exited) == ({key: 1}, {})
    assert one.run_id < two.run_id < three.run_id
    assert store.membership("segment", "vip") == [("a", False), ("b", True), ("c", False)]
    # The holdout flag is a property of the stay, not of an instant: b's stay shows it now.
    assert store.membership("segment", "vip", t1) == [("a", False), ("b", True)]
    assert store.membership("segment", "vip", t2) == [("b", True), ("c", False)]
    assert store.membership("segment", "vip", t1 - 1) == []
    assert store.last_compute_as_of() == t3
    stays = store.query(
        "SELECT profile_id, count(*) FROM memberships GROUP BY profile_id ORDER BY profile_id"
    )
    assert stays == [("a", 2), ("b", 1), ("c", 1)]
    runs = store.query("SELECT entered, exited, segments FROM compute_runs ORDER BY run_id")
    assert runs == [(2, 0, 1), (1, 1, 1), (1, 0, 1)]


def test_a_scoped_compute_exits_members_of_its_own_names_only(store: PostgresStore) -> None:
    record_compute(
        store.sql, computed(("vip", "a", False), ("churned", "a", False)), T0, time.perf_counter()
    )
    scoped = record_compute(
        store.sql,
        computed(("vip", "b", False)),
        T0 + MINUTE,
        time.perf_counter(),
        scope=[("segment", "vip")],
    )

    assert scoped.exited == {("segment", "vip"): 1}
    assert store.membership("segment", "vip") == [("b", False)]
    assert store.membership("segment", "churned") == [("a", False)]


# --- several writers -----------------------------------------------------------------------------


def test_a_batch_resolved_before_another_writer_changed_its_profile_is_refused(
    url: str, store: PostgresStore
) -> None:
    ingest(store, [{"type": "identify", "messageId": "1", "userId": "u1"}])
    other = PostgresStore(url)
    try:
        late = messages(
            [{"type": "identify", "messageId": "2", "userId": "u1", "traits": {"email": "a@x.io"}}]
        )
        owners, profiles = store.load_identity_state(
            [("user_id", "u1"), ("email", "a@x.io")], ["user_id", "email"]
        )
        owner = owners[("user_id", "u1")]
        changes = IdentityChanges(new_identities=[("email", "a@x.io", owner, late[0].timestamp_us)])
        # Meanwhile another process gives the same profile another email (limit: one).
        store_messages(
            other,
            IDENTITY,
            messages(
                [{"type": "identify", "messageId": "3", "userId": "u1",
                  "traits": {"email": "b@x.io"}}]
            ),
        )  # fmt: skip

        with pytest.raises(StaleIdentityError):
            store.commit_batch(ResolvedBatch(late, [owner], changes, profiles), [])
    finally:
        other.close()
    assert store.query("SELECT value FROM identities WHERE kind = 'email'") == [("b@x.io",)]
    assert store.query("SELECT count(*) FROM events") == [(2,)]


class _RacedStore(PostgresStore):
    """A store whose first commit finds that another process has just stored `race`."""

    def __init__(self, url: str, race: list[Message]) -> None:
        super().__init__(url)
        self._race: list[Message] | None = race
        self.commits = 0

    def commit_batch(self, batch: ResolvedBatch, rejections: Any) -> int:
        self.commits += 1
        if self._race is not None:
            race, self._race = self._race, None
            other = PostgresStore(self.url)
            try:
                store_messages(other, IDENTITY, race)
            finally:
                other.close()
        return super().commit_batch(batch, rejections)


def test_ingest_resolves_a_batch_again_when_another_writer_merged_its_profile(
    url: str, store: PostgresStore
) -> None:
    ingest(
        store,
        [
            {"type": "track", "messageId": "1", "anonymousId": "a1", "event": "V"},
            {"type": "identify", "messageId": "2", "userId": "u1"},
        ],
    )
    raced = _RacedStore(
        url, messages([{"type": "identify", "messageId": "3", "userId": "u1", "anonymousId": "a1"}])
    )
    try:
        result = store_messages(
            raced,
            IDENTITY,
            messages([{"type": "track", "messageId": "4", "anonymousId": "a1", "event": "Bought"}]),
        )
        assert result.stored == 1
        assert raced.commits == 2  # refused once, stored after resolving again
    finally:
        raced.close()
    survivor = store.find_profile("user_id", "u1")
    assert store.query("SELECT profile_id FROM events WHERE message_id = '4'") == [(survivor,)]
    assert_consistent(store)


def workload(worker: int, users: int) -> list[dict[str, Any]]:
    """Messages one writer sends, in step with the other writer: each user's visit under this
    writer's anonymous id and the identify linking it to the user (the other writer links its
    own id to the same user at the same time); then an email for the user, a different one
    from each writer (a profile holds one email: only one may be attached); then purchases
    that both writers send (each must be stored once)."""
    raws: list[dict[str, Any]] = []
    for user in range(users):
        anonymous = f"anon-{user}-{worker}"
        raws.append(
            {"type": "track", "messageId": f"w{worker}-t-{user}", "anonymousId": anonymous,
             "event": "Viewed", "timestamp": at(user % 50)}
        )  # fmt: skip
        raws.append(
            {"type": "identify", "messageId": f"w{worker}-i-{user}", "anonymousId": anonymous,
             "userId": f"user-{user}", "traits": {"seen_by": worker},
             "timestamp": at(user % 50 + 1)}
        )  # fmt: skip
    for user in range(users):
        raws.append(
            {"type": "identify", "messageId": f"w{worker}-e-{user}", "userId": f"user-{user}",
             "traits": {"email": f"w{worker}.user{user}@example.com"},
             "timestamp": at(user % 50 + 2)}
        )  # fmt: skip
    for user in range(users):
        raws.append(
            {"type": "track", "messageId": f"shared-{user}", "userId": f"user-{user}",
             "event": "Bought", "timestamp": at(user % 50 + 3)}
        )  # fmt: skip
    return raws


def write_in_small_batches(
    url: str, worker: int, users: int, store: PostgresStore | None, start_together: Any = None
) -> int:
    """Store a writer's workload two messages at a time; how many it stored.

    Two writers go through the same users at once; with `start_together` (a barrier) they
    start every batch together, so each pair of batches races for the same identities.
    """
    own = store or PostgresStore(url)
    raws = workload(worker, users)
    stored = 0
    try:
        for start in range(0, len(raws), 2):
            if start_together is not None:
                start_together.wait()
            stored += ingest(own, raws[start : start + 2]).stored
    finally:
        if store is None:
            own.close()
    return stored


def assert_consistent(store: PostgresStore) -> None:
    """One owner per identifier, live; every event on a live profile (itself or by alias)."""
    assert store.query(
        "SELECT count(*) FROM identities i JOIN profiles p USING (profile_id) "
        "WHERE p.merged_into IS NOT NULL"
    ) == [(0,)]
    assert store.query(
        "SELECT count(*) FROM events e LEFT JOIN profile_aliases a USING (profile_id) "
        "JOIN profiles p ON p.profile_id = coalesce(a.canonical_id, e.profile_id) "
        "WHERE p.merged_into IS NULL"
    ) == store.query("SELECT count(*) FROM events")
    assert store.query(
        "SELECT count(*) FROM profiles p JOIN profile_aliases a USING (profile_id) "
        "WHERE p.merged_into IS DISTINCT FROM a.canonical_id"
    ) == [(0,)]


def assert_every_user_is_one_profile(store: PostgresStore, users: int) -> None:
    """Each user's ids on one live profile, holding exactly one of the two emails sent."""
    assert store.stats()["profiles"]["total"] == users
    for user in range(users):
        owners = store.query(
            "SELECT DISTINCT profile_id FROM identities WHERE value IN (%s, %s, %s)",
            (f"user-{user}", f"anon-{user}-0", f"anon-{user}-1"),
        )
        assert len(owners) == 1, (user, owners)
        emails = store.query(
            "SELECT value FROM identities WHERE kind = 'email' AND profile_id = %s", owners[0]
        )
        assert len(emails) == 1, (user, emails)
    assert store.query("SELECT count(*) FROM identities") == [(users * 4,)]


def test_two_threads_storing_overlapping_identities_leave_one_profile_per_user(
    store: PostgresStore,
) -> None:
    users = 60
    results: list[int] = []
    errors: list[BaseException] = []
    together = threading.Barrier(2, timeout=60)

    def run(worker: int) -> None:
        try:
            results.append(write_in_small_batches(store.url, worker, users, store, together))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sum(results) == users * 7  # per writer: visit, identify, email; one shared purchase
    assert store.stats()["events"]["total"] == users * 7
    assert_consistent(store)
    assert_every_user_is_one_profile(store, users)


def test_two_processes_storing_overlapping_identities_leave_one_profile_per_user(
    url: str, store: PostgresStore
) -> None:
    users = 60
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(2) as pool:
        stored = pool.starmap(
            write_in_small_batches, [(url, 0, users, None), (url, 1, users, None)]
        )

    assert sum(stored) == users * 7
    assert store.stats()["events"]["total"] == users * 7
    assert_consistent(store)
    assert_every_user_is_one_profile(store, users)
