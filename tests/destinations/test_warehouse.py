"""The warehouse destination on a real DuckDB file and a real Postgres: same tests, both engines.

Postgres is the server at 127.0.0.1:5432 (database `test`, trust auth, user postgres or root);
each test uses its own schema and drops it. Without that server the Postgres cases skip.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psycopg
import pytest
from pydantic import ValidationError

from cohortsync.destinations.base import (
    AuthError,
    Conversion,
    DestinationContext,
    TransientError,
)
from cohortsync.destinations.warehouse import WarehouseConfig, WarehouseDestination
from tests.destinations.conformance import Conformance, R, Records, Subject
from tests.postgres import PG_HOST, PG_REASON, PG_URL

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NOW = datetime(2025, 3, 2, 9, 30, tzinfo=UTC)
TABLES = ("audience_members", "audience_changes", "conversions", "applied_batches")


def free_port() -> int:
    """A loopback TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


RECORDS = Records(
    start=T0, step=timedelta(minutes=1), identifiers=lambda _, p: {"email": f"{p}@example.com"}
)
change = RECORDS.change
batch = RECORDS.batch


def conversion(conversion_id: int, profile: str, value: float = 42.0) -> Conversion:
    """A Purchase from order_completed, one hour per id after T0."""
    return RECORDS.conversion(
        conversion_id,
        profile=profile,
        at=T0 + timedelta(hours=conversion_id),
        ids={"email": f"{profile}@example.com", "phone": "+14155550100"},
        value=value,
        properties={"order_id": f"o{conversion_id}"},
        context={},
    )


class Warehouse:
    """One engine under test: makes destinations on it and reads its tables back."""

    def __init__(self, engine: str, url: str, project_dir: Path) -> None:
        self.engine = engine
        self.url = url
        self.project_dir = project_dir
        self.schema = f"cs_test_{uuid.uuid4().hex[:10]}"
        self.opened: list[WarehouseDestination] = []
        self.http = httpx.Client()

    def destination(self, **settings: Any) -> WarehouseDestination:
        """A new destination instance on this database and schema (closed at cleanup)."""
        config = WarehouseConfig.model_validate(
            {"type": "warehouse", "url": self.url, "schema": self.schema, **settings}
        )
        context = DestinationContext("warehouse", self.project_dir, self.http, lambda: NOW)
        dest = WarehouseDestination(config, context)
        self.opened.append(dest)
        return dest

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a query with `{s}` standing for the schema."""
        sql = sql.replace("{s}", f'"{self.schema}"')
        if self.engine == "duckdb":
            with duckdb.connect(str(self.project_dir / "warehouse.duckdb")) as conn:
                return conn.execute(sql).fetchall()
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def relations(self) -> set[str]:
        """Tables and views present in the test schema."""
        found = self.rows(
            f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{self.schema}'"
        )
        return {str(name) for (name,) in found}

    def members(self, audience: str = "cio_cart_abandon_6h") -> dict[str, tuple[Any, ...]]:
        """profile_id → (holdout, email, phone, entered_at) of current members."""
        found = self.rows(
            'SELECT profile_id, holdout, email, phone, entered_at FROM {s}."audience_members" '
            f"WHERE audience = '{audience}'"
        )
        return {row[0]: tuple(row[1:]) for row in found}

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, sorted."""
        return {t: sorted(self.rows(f'SELECT * FROM {{s}}."{t}"'), key=repr) for t in TABLES}

    def cleanup(self) -> None:
        """Close every destination and drop the Postgres schema."""
        for dest in self.opened:
            dest.close()
        self.http.close()
        if self.engine == "postgres":
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


@pytest.fixture(params=["duckdb", "postgres"])
def wh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    """The warehouse on a fresh DuckDB file, then on a fresh schema of the local Postgres."""
    if request.param == "duckdb":
        warehouse = Warehouse("duckdb", "duckdb:///warehouse.duckdb", tmp_path)
    else:
        if PG_URL is None:
            pytest.skip(f"Postgres not reachable at {PG_HOST} (database test): {PG_REASON}")
        warehouse = Warehouse("postgres", PG_URL, tmp_path)
    yield warehouse
    warehouse.cleanup()


def test_declares_a_warehouse_that_takes_every_identifier_and_both_record_kinds() -> None:
    capabilities = WarehouseDestination.capabilities
    assert WarehouseDestination.kind == "warehouse"
    assert capabilities.ad_platform is False
    assert set(capabilities.identifiers) == {"user_id", "email", "phone", "anonymous_id"}
    assert capabilities.audiences and capabilities.conversions
    assert capabilities.max_batch >= 50_000


def test_tables_and_view_are_created_on_first_write(wh: Warehouse) -> None:
    dest = wh.destination()
    dest.dry_run(batch(change(1, "add", profile="p1"), batch_id="b0"))
    assert wh.relations() == set()
    dest.apply(batch(change(1, "add", profile="p1"), batch_id="b1"))
    assert wh.relations() == {*TABLES, "audience_stays"}
    # existing tables are reused
    wh.destination().apply(batch(change(2, "add", profile="p2"), batch_id="b2"))
    assert set(wh.members()) == {"p1", "p2"}


def test_table_prefix_names_every_table(wh: Warehouse) -> None:
    wh.destination(table_prefix="cs_").apply(batch(change(1, "add", profile="p1"), batch_id="b1"))
    assert wh.relations() == {f"cs_{t}" for t in (*TABLES, "audience_stays")}


def test_add_remove_sequences_give_exact_membership_and_change_log(wh: Warehouse) -> None:
    dest = wh.destination()
    rng = random.Random(7)
    expected: dict[str, tuple[datetime, bool]] = {}
    log: list[tuple[int, str, str, bool]] = []
    next_id = 1
    for number in range(6):
        changes = []
        for _ in range(60):
            profile = f"p{rng.randrange(25)}"
            holdout = rng.random() < 0.2
            op = "remove" if profile in expected and rng.random() < 0.6 else "add"
            made = change(next_id, op, profile=profile, holdout=holdout)
            if op == "add":
                entered = expected[profile][0] if profile in expected else made.at
                expected[profile] = (entered, holdout)
            else:
                expected.pop(profile, None)
            changes.append(made)
            log.append((next_id, profile, op, holdout))
            next_id += 1
        rng.shuffle(changes)  # order comes from change_id, not from position in the batch
        dest.apply(batch(*changes, batch_id=f"b{number}"))

    members = wh.members()
    assert {p: (m[3], m[0]) for p, m in members.items()} == expected
    assert all(m[1] == f"{p}@example.com" for p, m in members.items())
    stored = wh.rows(
        'SELECT change_id, profile_id, operation, holdout FROM {s}."audience_changes" '
        "ORDER BY change_id"
    )
    assert [tuple(row) for row in stored] == log


def test_order_within_a_batch_follows_change_id(wh: Warehouse) -> None:
    dest = wh.destination()
    dest.apply(
        batch(change(2, "remove", profile="p1"), change(1, "add", profile="p1"), batch_id="b1")
    )
    dest.apply(
        batch(
            change(5, "add", profile="p2"),
            change(4, "remove", profile="p2"),
            change(3, "add", profile="p2"),
            batch_id="b2",
        )
    )
    members = wh.members()
    assert set(members) == {"p2"}
    assert members["p2"][3] == T0 + timedelta(minutes=5)  # the stay that began after the remove


def test_holdout_members_are_kept_and_flagged(wh: Warehouse) -> None:
    dest = wh.destination()
    dest.apply(
        batch(
            change(1, "add", profile="control", holdout=True),
            change(2, "add", profile="treated"),
            batch_id="b1",
        )
    )
    assert {p: m[0] for p, m in wh.members().items()} == {"control": True, "treated": False}
    flags = wh.rows('SELECT profile_id, holdout FROM {s}."audience_changes" ORDER BY change_id')
    assert [tuple(f) for f in flags] == [("control", True), ("treated", False)]


def test_a_later_add_updates_holdout_and_identifiers_but_keeps_the_entry_time(
    wh: Warehouse,
) -> None:
    dest = wh.destination()
    dest.apply(
        batch(change(1, "add", profile="p1", holdout=True, email="p1@example.com"), batch_id="b1")
    )
    dest.apply(
        batch(
            change(2, "add", profile="p1", email="p1@example.com", phone="+14155550100"),
            batch_id="b2",
        )
    )
    assert wh.members() == {
        "p1": (False, "p1@example.com", "+14155550100", T0 + timedelta(minutes=1))
    }


def test_reapplying_the_same_batch_changes_nothing(wh: Warehouse) -> None:
    first = batch(
        change(1, "add", profile="p1"),
        change(2, "add", profile="p2"),
        change(3, "remove", profile="p1"),
        batch_id="b1",
    )
    result = wh.destination().apply(first)
    assert result.stats == {"received": 3, "written": 3, "duplicates": 0}
    before = wh.snapshot()

    again = wh.destination().apply(first)  # a new instance: as after a restart

    assert again.stats == {"received": 3, "written": 0, "already_applied": 1}
    assert not again.rejected and not again.retry
    assert wh.snapshot() == before


def test_a_change_already_applied_in_another_batch_is_not_applied_again(wh: Warehouse) -> None:
    dest = wh.destination()
    dest.apply(batch(change(1, "add", profile="p1"), batch_id="b1"))
    dest.apply(batch(change(2, "remove", profile="p1"), batch_id="b2"))
    # A resend that regrouped change 1 with a new change: change 1 must not re-add p1.
    result = dest.apply(
        batch(change(1, "add", profile="p1"), change(3, "add", profile="p3"), batch_id="b3")
    )

    assert result.stats == {"received": 2, "written": 1, "duplicates": 1}
    assert set(wh.members()) == {"p3"}
    ids = wh.rows('SELECT change_id, batch_id FROM {s}."audience_changes" ORDER BY change_id')
    assert [tuple(row) for row in ids] == [(1, "b1"), (2, "b2"), (3, "b3")]


def test_two_writers_sending_the_same_batch_at_once_write_it_once(wh: Warehouse) -> None:
    size = 3_000
    same = batch(*(change(i, "add", profile=f"p{i}") for i in range(1, size + 1)), batch_id="b1")
    writers = [wh.destination(), wh.destination()]
    start = threading.Barrier(len(writers))
    written: list[int] = []

    def send(dest: WarehouseDestination) -> None:
        start.wait()
        for _ in range(5):  # what the sync layer does with a TransientError: retry later
            try:
                written.append(dest.apply(same).stats["written"])
                return
            except TransientError:
                continue

    threads = [threading.Thread(target=send, args=(dest,)) for dest in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert sorted(written) == [0, size]
    assert wh.rows('SELECT count(*) FROM {s}."audience_changes"') == [(size,)]
    assert wh.rows('SELECT count(*) FROM {s}."applied_batches"') == [(1,)]
    assert len(wh.members()) == size


def test_a_change_repeated_inside_one_batch_is_written_once(wh: Warehouse) -> None:
    wh.destination().apply(
        batch(change(1, "add", profile="p1"), change(1, "add", profile="p1"), batch_id="b1")
    )
    assert wh.rows('SELECT count(*) FROM {s}."audience_changes"') == [(1,)]


def test_stays_view_gives_entry_and_exit_of_each_stay(wh: Warehouse) -> None:
    dest = wh.destination()
    dest.apply(
        batch(
            change(1, "add", profile="p1", holdout=True),
            change(2, "add", profile="p1"),
            batch_id="b1",
        )
    )
    dest.apply(
        batch(change(3, "remove", profile="p1"), change(4, "add", profile="p2"), batch_id="b2")
    )
    dest.apply(batch(change(5, "add", profile="p1"), batch_id="b3"))
    stays = wh.rows(
        'SELECT profile_id, holdout, entered_at, exited_at FROM {s}."audience_stays" '
        "ORDER BY profile_id, entered_at"
    )
    minute = timedelta(minutes=1)
    assert [tuple(s) for s in stays] == [
        ("p1", True, T0 + minute, T0 + 3 * minute),
        ("p1", False, T0 + 5 * minute, None),
        ("p2", False, T0 + 4 * minute, None),
    ]


def test_audiences_are_kept_apart(wh: Warehouse) -> None:
    dest = wh.destination()
    dest.apply(
        batch(
            change(1, "add", profile="p1"),
            change(2, "add", profile="p1", audience="cio_lapsed_75d"),
            batch_id="b1",
        )
    )
    dest.apply(batch(change(3, "remove", profile="p1"), batch_id="b2"))
    assert set(wh.members()) == set()
    assert set(wh.members("cio_lapsed_75d")) == {"p1"}


def test_conversions_are_stored_once_each(wh: Warehouse) -> None:
    dest = wh.destination()
    first = RECORDS.conversions(conversion(1, "p1"), conversion(2, "p2", 19.5), batch_id="c1")
    assert dest.send_conversions(first).stats == {"received": 2, "written": 2, "duplicates": 0}
    assert dest.send_conversions(first).stats["already_applied"] == 1
    regrouped = RECORDS.conversions(conversion(2, "p2", 19.5), conversion(3, "p3"), batch_id="c2")
    assert dest.send_conversions(regrouped).stats == {"received": 2, "written": 1, "duplicates": 1}

    stored = wh.rows(
        'SELECT conversion_id, message_id, "at", profile_id, value, email '
        'FROM {s}."conversions" ORDER BY conversion_id'
    )
    assert [tuple(r) for r in stored] == [
        (n, f"msg-{n}", T0 + timedelta(hours=n), f"p{n}", value, f"p{n}@example.com")
        for n, value in ((1, 42.0), (2, 19.5), (3, 42.0))
    ]
    same = wh.rows('SELECT DISTINCT name, event, currency, phone FROM {s}."conversions"')
    assert same == [("Purchase", "order_completed", "USD", "+14155550100")]
    (props,) = wh.rows('SELECT properties FROM {s}."conversions" WHERE conversion_id = 1')[0]
    assert (json.loads(props) if isinstance(props, str) else props) == {"order_id": "o1"}
    applied = wh.rows('SELECT batch_id, kind, applied_at, "rows" FROM {s}."applied_batches"')
    assert sorted(tuple(a) for a in applied) == [
        ("c1", "conversions", NOW, 2),
        ("c2", "conversions", NOW, 2),
    ]


def test_fifty_thousand_changes_in_one_batch(wh: Warehouse) -> None:
    dest = wh.destination()
    size = 50_000
    adds = [change(i, "add", profile=f"p{i}") for i in range(1, size + 1)]
    assert dest.apply(batch(*adds, batch_id="big1")).stats["written"] == size
    # Half of them leave, and 25,000 new profiles enter, in one batch again.
    mixed = [change(size + i, "remove", profile=f"p{i}") for i in range(1, size // 2 + 1)] + [
        change(2 * size + i, "add", profile=f"q{i}") for i in range(1, size // 2 + 1)
    ]
    assert dest.apply(batch(*mixed, batch_id="big2")).stats["written"] == size
    assert wh.rows('SELECT count(*) FROM {s}."audience_members"') == [(size,)]
    assert wh.rows('SELECT count(*) FROM {s}."audience_changes"') == [(2 * size,)]
    newcomers = "SELECT count(*) FROM {s}.\"audience_members\" WHERE profile_id LIKE 'q%'"
    assert wh.rows(newcomers) == [(size // 2,)]


def test_records_without_a_valid_operation_are_rejected_alone(wh: Warehouse) -> None:
    bad = change(2, "replace", profile="p2")
    result = wh.destination().apply(batch(change(1, "add", profile="p1"), bad, batch_id="b1"))
    assert result.rejected == {2: "operation must be add or remove, not 'replace'"}
    assert set(wh.members()) == {"p1"}


def test_dry_run_describes_the_writes_with_identifiers_and_writes_nothing(wh: Warehouse) -> None:
    dest = wh.destination()
    plan = dest.dry_run(
        batch(
            change(1, "add", profile="p1"),
            change(2, "add", profile="p2"),
            change(3, "remove", profile="p1"),
            batch_id="b1",
        )
    )
    json.dumps(plan)
    (step,) = plan
    assert step["operations"] == {"add": 2, "remove": 1}
    writes = {(w["table"], w["operation"]): w["rows"] for w in step["writes"]}
    assert writes == {
        (f"{wh.schema}.audience_changes", "insert"): 3,
        (f"{wh.schema}.audience_members", "upsert"): 1,
        (f"{wh.schema}.audience_members", "delete"): 1,
        (f"{wh.schema}.applied_batches", "insert"): 1,
    }
    assert [row["email"] for row in step["sample"]] == [
        "p1@example.com",
        "p2@example.com",
        "p1@example.com",
    ]
    conversions = dest.dry_run(RECORDS.conversions(conversion(1, "p1"), batch_id="c1"))
    json.dumps(conversions)
    assert conversions[0]["writes"][0] == {
        "table": f"{wh.schema}.conversions",
        "operation": "insert",
        "rows": 1,
    }
    assert conversions[0]["sample"][0]["email"] == "p1@example.com"
    assert wh.relations() == set()


def test_close_then_write_again_reconnects(wh: Warehouse) -> None:
    dest = wh.destination()
    dest.apply(batch(change(1, "add", profile="p1"), batch_id="b1"))
    dest.close()
    dest.close()
    dest.apply(batch(change(2, "add", profile="p2"), batch_id="b2"))
    assert set(wh.members()) == {"p1", "p2"}


def test_relative_duckdb_path_is_inside_the_project_folder(tmp_path: Path) -> None:
    warehouse = Warehouse("duckdb", "duckdb:///data/wh.duckdb", tmp_path)
    try:
        warehouse.destination().apply(batch(change(1, "add", profile="p1"), batch_id="b1"))
    finally:
        warehouse.cleanup()
    assert (tmp_path / "data" / "wh.duckdb").is_file()


def test_duckdb_file_locked_by_another_process_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
            "sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    warehouse = Warehouse("duckdb", f"duckdb:///{path}", tmp_path)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        dest = warehouse.destination()
        with pytest.raises(TransientError, match="open in another process"):
            dest.apply(batch(change(1, "add", profile="p1"), batch_id="b1"))
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        # the retry succeeds once it is free
        dest.apply(batch(change(1, "add", profile="p1"), batch_id="b1"))
        assert set(warehouse.members()) == {"p1"}
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        warehouse.cleanup()


def test_postgres_unreachable_is_transient_and_hides_the_password(tmp_path: Path) -> None:
    url = f"postgresql://cohortsync:s3cr3t-pw@127.0.0.1:{free_port()}/test"
    warehouse = Warehouse("postgres", url, tmp_path)
    dest = warehouse.destination()
    with pytest.raises(TransientError) as raised:
        dest.apply(batch(change(1, "add", profile="p1"), batch_id="b1"))
    message = str(raised.value)
    assert "s3cr3t" not in message
    assert "cohortsync:***@127.0.0.1" in message
    assert "unavailable" in message
    plan = dest.dry_run(batch(change(1, "add", profile="p1"), batch_id="b1"))
    assert "s3cr3t" not in json.dumps(plan)
    dest.close()


@pytest.mark.skipif(PG_URL is None, reason=f"Postgres not reachable at {PG_HOST}")
def test_postgres_missing_database_says_so(tmp_path: Path) -> None:
    assert PG_URL is not None
    url = PG_URL.rsplit("/", 1)[0] + f"/cs_missing_{uuid.uuid4().hex[:8]}"
    dest = Warehouse("postgres", url, tmp_path).destination()
    with pytest.raises(AuthError, match="does not exist"):
        dest.apply(batch(change(1, "add", profile="p1"), batch_id="b1"))
    dest.close()


def test_schema_may_be_written_schema_or_db_schema() -> None:
    for key in ("schema", "db_schema"):
        config = WarehouseConfig.model_validate({"url": "duckdb:///w.duckdb", key: "analytics"})
        assert config.db_schema == "analytics"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"url": "mysql://u:pw@host/db"}, "url must start with duckdb:/// .* not mysql://"),
        ({"url": "warehouse.duckdb"}, "not a path"),
        ({"url": "duckdb:///"}, "names no DuckDB file"),
        ({"url": "duckdb:///w.duckdb", "schema": "bad-name"}, "plain SQL name"),
        ({"url": "duckdb:///w.duckdb", "schema": "fine\n"}, "plain SQL name"),
        ({"url": "duckdb:///w.duckdb", "table_prefix": "1x"}, "table_prefix"),
        ({"url": "duckdb:///w.duckdb", "tables": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_settings_are_named_with_the_fix(settings: dict[str, str], expected: str) -> None:
    with pytest.raises(ValidationError, match=expected) as raised:
        WarehouseConfig.model_validate({"type": "warehouse", **settings})
    assert "pw@" not in str(raised.value)


# --- the destination conformance suite -------------------------------------------------------


class WarehouseSubject(Subject):
    """The warehouse on a fresh DuckDB file or Postgres schema. On Postgres it signs in as a
    role of its own, so refusing that role's login (401) or its connections (503) breaks it
    alone."""

    def __init__(self, wh: Warehouse, role: str | None) -> None:
        self.wh = wh
        self.role = role
        url = wh.url if role is None else f"postgresql://{role}@{PG_HOST}/test"
        self.destination = wh.destination(url=url)

    def members(self, audience: str) -> set[str]:
        if "audience_members" not in self.wh.relations():
            return set()
        return set(self.wh.members(audience))

    def conversions(self) -> Counter[str]:
        if "conversions" not in self.wh.relations():
            return Counter()
        return Counter(str(m) for (m,) in self.wh.rows('SELECT message_id FROM {s}."conversions"'))

    def state(self) -> object:
        return self.wh.snapshot() if "applied_batches" in self.wh.relations() else {}

    def unusable(self, record: R) -> R:
        """A change without a profile: nothing to key the member on."""
        return replace(record, profile_id="")

    def fail(self, status: int, retry_after: float | None = None) -> None:
        assert self.role is not None, "only the Postgres warehouse has a service to break"
        self.destination.close()
        refusal = "NOLOGIN" if status == 401 else "CONNECTION LIMIT 0"
        with psycopg.connect(PG_URL or "", autocommit=True) as conn:
            conn.execute(f'ALTER ROLE "{self.role}" {refusal}')

    def recover(self) -> None:
        if self.role is not None:
            with psycopg.connect(PG_URL or "", autocommit=True) as conn:
                conn.execute(f'ALTER ROLE "{self.role}" LOGIN CONNECTION LIMIT -1')


@contextmanager
def own_role() -> Iterator[str]:
    """A Postgres role that may create schemas in the test database, dropped afterwards."""
    role = f"cs_conformance_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL or "", autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT CREATE ON DATABASE test TO "{role}"')
    try:
        yield role
    finally:
        with psycopg.connect(PG_URL or "", autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


class TestWarehouseConformance(Conformance):
    @pytest.fixture
    def subject(self, wh: Warehouse) -> Iterator[WarehouseSubject]:
        if wh.engine == "duckdb":
            yield WarehouseSubject(wh, None)
            return
        with own_role() as role:
            subject = WarehouseSubject(wh, role)
            yield subject
            subject.destination.close()  # the role signs out before it is dropped
