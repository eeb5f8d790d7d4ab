"""Segments compiled for Postgres agree with the Python evaluator, on a real Postgres schema.

The histories, segments and instants are the ones `test_agreement.py` draws. Each example is
ingested through a real (DuckDB) engine, which resolves identities and names events, and its
rows are then copied into a Postgres schema built by the Postgres store's migrations, JSON as
JSONB. The Postgres SQL must give the evaluator's members, trait values and `next_change`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cohortsync.cli import app
from cohortsync.config.scaffold import scaffold_project
from cohortsync.demo.shop import generate_shop
from cohortsync.engine import Engine
from cohortsync.errors import InputError
from cohortsync.segments.ast import (
    Audience,
    Comparison,
    ComputedTrait,
    Condition,
    EventCondition,
    SegmentProject,
    TraitCondition,
)
from cohortsync.segments.compile import Compiler, DuckDBCompiler, PostgresCompiler, compiler_for
from cohortsync.segments.evaluate import compute_trait, evaluate
from cohortsync.store.duckdb_store import DuckDBStore
from cohortsync.store.postgres_schema import MIGRATIONS
from tests.postgres import postgres_schema
from tests.segments import test_compile, test_members
from tests.segments.test_agreement import (
    AFTER_EDGES,
    AFTER_SHOES_CART,
    ANCHOR_US,
    PROJECTS,
    H,
    check_next_change,
    histories,
    messages,
    one_segment,
    same_value,
    scenarios,
    shared_engine,
)

__all__ = ["shared_engine"]  # the DuckDB engine every example is ingested through

GOLDEN = Path(__file__).parent / "golden" / "postgres"
# The tables a segment query reads, copied from the DuckDB store with the same columns.
TABLES = ("events", "profiles", "identities", "profile_aliases", "profile_traits")
_COLUMNS = (
    "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
    "ORDER BY ordinal_position"
)
_runs = iter(range(10**9))


def duckdb_store(engine: Engine) -> DuckDBStore:
    """The engine's store, a DuckDB one (the examples are ingested there first)."""
    assert isinstance(engine.store, DuckDBStore)
    return engine.store


class PgSegments:
    """A Postgres schema holding copies of profiles and events, queried by compiled SQL."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.compiler = PostgresCompiler()

    def copy_from(self, engine: Engine, where: dict[str, str], param: str) -> None:
        """Copy the rows of each table passing `where[table]` (one `?` bound to `param`)."""
        q = duckdb_store(engine).query
        for table in TABLES:
            names = [r[0] for r in q(_COLUMNS, (table,))]
            columns = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in names)
            rows = q(f"SELECT {columns} FROM {table} WHERE {where[table]}", (param,))
            quoted = ", ".join(f'"{c}"' for c in names)
            with (
                self.conn.cursor() as cur,
                cur.copy(
                    f"COPY {table} ({quoted}) FROM STDIN"  # type: ignore[arg-type]
                ) as copy,
            ):
                for row in rows:
                    copy.write_row(row)

    def ids(self, sql: str) -> list[str]:
        """The first column of every row."""
        return [row[0] for row in self.conn.execute(sql).fetchall()]  # type: ignore[call-overload]

    def members(self, project: SegmentProject, name: str, at: int) -> set[str]:
        ids = self.ids(self.compiler.render(self.compiler.compile_segment(name, project, at)))
        assert len(ids) == len(set(ids)), "duplicate members"
        return set(ids)

    def trait(self, trait: ComputedTrait, at: int) -> dict[str, Any]:
        sql = self.compiler.render(self.compiler.compile_trait(trait, at))
        return dict(self.conn.execute(sql).fetchall())  # type: ignore[call-overload]

    def all_members(self, project: SegmentProject, at: int) -> dict[str, set[str]]:
        """Every segment's members from the one query `compute` runs."""
        plan = self.compiler.compile_members(project, list(project.segments), at)
        cur = self.conn.execute(self.compiler.render(plan.query))  # type: ignore[call-overload]
        names = [d.name for d in cur.description or ()]
        rows = cur.fetchall()
        return {
            name: {row[0] for row in rows if row[names.index(column)]}
            for name, column in plan.columns.items()
        }


def _example_rows(prefix: str) -> tuple[dict[str, str], str]:
    """Per table, the rows of one example: its events and everything of their profiles."""
    profiles = "(SELECT profile_id FROM events WHERE message_id LIKE ?)"
    where = {
        "events": "message_id LIKE ?",
        "profiles": f"profile_id IN {profiles}",
        "identities": f"profile_id IN {profiles}",
        "profile_aliases": f"canonical_id IN {profiles}",
        "profile_traits": f"profile_id IN {profiles}",
    }
    return where, f"{prefix}%"


@contextmanager
def _segments_schema() -> Iterator[PgSegments]:
    """A fresh Postgres schema with the store's tables (its migrations run)."""
    with postgres_schema("seg") as url, psycopg.connect(url, autocommit=True) as conn:
        for _version, _description, sql in MIGRATIONS:
            conn.execute(sql.encode())
        yield PgSegments(conn)


@pytest.fixture(scope="module")
def pg() -> Iterator[PgSegments]:
    """One schema for every example of the module (each example has its own id prefix)."""
    with _segments_schema() as segments:
        yield segments


@pytest.fixture
def pg_empty() -> Iterator[PgSegments]:
    """A schema of this test's own, for tests that read every profile."""
    with _segments_schema() as segments:
        yield segments


def check_pg(
    engine: Engine, pg: PgSegments, people: list[dict[str, Any]], project: SegmentProject, at: int
) -> str:
    """Ingest one example, copy it to Postgres, assert Postgres SQL == the evaluator."""
    prefix = f"pg{next(_runs)}-"
    engine.ingest_messages(messages(people, prefix))
    hist = histories(engine, prefix)
    assert len(hist) == len(people)
    pg.copy_from(engine, *_example_rows(prefix))

    for trait in project.traits.values():
        sql = pg.trait(trait, at)
        for pid, h in hist.items():
            py = compute_trait(trait, h, at)
            assert same_value(sql[pid], py), (trait, pid, sql[pid], py, h)

    cache: dict[tuple[str, int], set[str]] = {}

    def members(name: str, t: int) -> set[str]:
        if (name, t) not in cache:
            cache[name, t] = pg.members(project, name, t) & set(hist)
        return cache[name, t]

    together = pg.all_members(project, at)
    for name, segment in project.segments.items():
        py_members = {pid for pid, h in hist.items() if evaluate(segment.condition, h, at, project)}
        assert members(name, at) == py_members, (name, segment.condition)
        assert together[name] & set(hist) == py_members, (name, "one query", segment.condition)

    check_next_change(project, hist, at, members)
    return prefix


PG_EXAMPLES = settings(
    max_examples=int(os.environ.get("AGREEMENT_PG_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@pytest.mark.parametrize("projects", PROJECTS.values(), ids=PROJECTS.keys())
@PG_EXAMPLES
@given(data=st.data())
def test_postgres_sql_and_evaluator_agree(
    shared_engine: Engine,
    pg: PgSegments,
    projects: st.SearchStrategy[SegmentProject] | None,
    data: st.DataObject,
) -> None:
    people, project, at = data.draw(scenarios(projects), label="scenario")
    check_pg(shared_engine, pg, people, project, at)


# --- cases the property could miss ----------------------------------------------------------


def _users(engine: Engine, prefix: str) -> dict[str, str]:
    """profile_id -> user_id without the example prefix."""
    rows = duckdb_store(engine).query(
        "SELECT profile_id, value FROM identities WHERE kind = 'user_id' AND value LIKE ?",
        (f"{prefix}%",),
    )
    return {pid: user.removeprefix(prefix) for pid, user in rows}


def test_strings_compare_by_code_point_whatever_the_locale(
    shared_engine: Engine, pg: PgSegments
) -> None:
    """By code point "Shoes" < "apple" < "shoes" < "ä"; a locale puts "apple" first."""
    people = [
        {"user": f"u{i}", "traits": {}, "email": False,
         "events": [("product_viewed", H, {"category": c})]}
        for i, c in enumerate(["Shoes", "shoes", "ä", "apple", "Rome"])
    ]  # fmt: skip
    cond = EventCondition("product_viewed", where=(Comparison("category", "gt", "Shoes"),))
    project = one_segment(cond)
    prefix = check_pg(shared_engine, pg, people, project, ANCHOR_US)
    users = _users(shared_engine, prefix)
    found = {users[p] for p in pg.members(project, "s2", ANCHOR_US) if p in users}
    assert found == {"u1", "u2", "u3"}
    # The test database sorts by code point already: the SQL must not leave it to the locale.
    sql = pg.compiler.render(pg.compiler.compile_segment("s2", project, ANCHOR_US))
    assert 'COLLATE "C"' in sql


def test_distinct_count_and_most_frequent_keep_5_and_5_0_apart(
    shared_engine: Engine, pg: PgSegments
) -> None:
    """JSONB equality says 5 = 5.0; the language counts them as two values."""
    prices = [5, 5.0, 5.0, "5", 1e22, 1e22]
    people = [
        {"user": "u0", "traits": {}, "email": False,
         "events": [("product_viewed", k * H, {"price": v}) for k, v in enumerate(prices, 1)]},
    ]  # fmt: skip
    distinct = ComputedTrait("ct0", "product_viewed", "distinct_count", "price")
    frequent = ComputedTrait("ct1", "product_viewed", "most_frequent", "price")
    project = one_segment(TraitCondition(Comparison("ct0", "eq", 4)), distinct, frequent)
    prefix = check_pg(shared_engine, pg, people, project, ANCHOR_US)
    (pid,) = _users(shared_engine, prefix)
    assert pg.trait(distinct, ANCHOR_US)[pid] == 4
    assert pg.trait(frequent, ANCHOR_US)[pid] == 5.0


def test_first_and_last_break_timestamp_ties_by_message_id_code_point(
    shared_engine: Engine, pg: PgSegments
) -> None:
    """Two events at one instant: `first` takes the smaller message_id by code point."""
    people = [
        {"user": "u0", "traits": {}, "email": False,
         "events": [("product_viewed", H, {"category": "a"}),
                    ("product_viewed", H, {"category": "b"})]},
    ]  # fmt: skip
    first = ComputedTrait("ct0", "product_viewed", "first", "category")
    last = ComputedTrait("ct1", "product_viewed", "last", "category")
    project = one_segment(TraitCondition(Comparison("ct0", "eq", "a")), first, last)
    prefix = check_pg(shared_engine, pg, people, project, ANCHOR_US)
    (pid,) = _users(shared_engine, prefix)
    assert (pg.trait(first, ANCHOR_US)[pid], pg.trait(last, ANCHOR_US)[pid]) == ("a", "b")


def test_after_counts_up_to_its_bound_from_the_latest_matching_anchor(
    shared_engine: Engine, pg: PgSegments
) -> None:
    """The edges of `after:` with `within:` (see the DuckDB test of the same name)."""
    project = one_segment(AFTER_SHOES_CART)
    prefix = check_pg(shared_engine, pg, AFTER_EDGES, project, ANCHOR_US)
    users = _users(shared_engine, prefix)
    found = {users[p] for p in pg.members(project, "s2", ANCHOR_US) if p in users}
    assert found == {"u1", "u2"}


# --- golden cases ---------------------------------------------------------------------------

GOLDEN_SEGMENTS: dict[str, Condition] = dict(test_compile.GOLDEN_SEGMENTS)  # type: ignore[arg-type]
GOLDEN_PROJECT = test_compile.project(GOLDEN_SEGMENTS, (test_compile.LTV,))


def _golden_history(engine: Engine) -> None:
    """People in and out of each golden segment (cart abandon, lapsed VIP, email promo)."""
    track, identify = test_compile.track, test_compile.identify
    d = timedelta(days=1)
    h = timedelta(hours=1)
    engine.ingest_messages(
        [
            identify("g1", email="g1@example.com"),
            track("g1", "Added To Cart", 2 * h),
            identify("g2", email="g2@example.com"),
            track("g2", "Added To Cart", 3 * h),
            track("g2", "Order Completed", 1 * h),
            identify("g3", email="g3@example.com"),
            track("g3", "Order Completed", 30 * d, total=600),
            identify("g4", email="g4@example.com"),
            track("g4", "Order Completed", 30 * d, total=600),
            track("g4", "Order Completed", 2 * d, total=10),
            *(track("g5", "Product Viewed", k * h, category="shoes", price=30) for k in (1, 2, 3)),
            identify("g5", email="g5@example.com"),
            track("g6", "Product Viewed", 1 * h, category="hats", price=30),
            test_compile.delivered("g7", "cmp_welcome_1", 2 * d),  # no order after it
            test_compile.delivered("g8", "cmp_cart_recovery_1", 3 * d),
            track("g8", "Order Completed", 3 * d - 2 * h),  # converted within 24h
        ]
    )


@pytest.mark.parametrize("name", sorted(test_compile.GOLDEN_SEGMENTS))
def test_golden_postgres_sql(name: str) -> None:
    """The Postgres SQL of each golden segment, reviewed as a diff."""
    compiler = PostgresCompiler()
    sql = compiler.render(compiler.compile_segment(name, GOLDEN_PROJECT, test_compile.AT_US), True)
    path = GOLDEN / f"{name}.sql"
    if not path.exists() or os.environ.get("COHORTSYNC_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(sql + "\n", encoding="utf-8")
    assert sql + "\n" == path.read_text(encoding="utf-8")


def test_golden_segments_have_the_same_members_on_postgres(
    engine: Engine, pg_empty: PgSegments
) -> None:
    pg = pg_empty
    _golden_history(engine)
    pg.copy_from(engine, {t: "TRUE OR ? IS NULL" for t in TABLES}, "")
    duck = DuckDBCompiler()
    at = test_compile.AT_US
    expected = {
        "cart_abandon": {"g1"},
        "lapsed_vip": {"g3"},
        "email_promo": {"g5", "g6", "g7", "g8"},  # no email
        "nonconverter_msg1": {"g7"},
    }
    for name in test_compile.GOLDEN_SEGMENTS:
        query = duck.compile_segment(name, GOLDEN_PROJECT, at)
        on_duckdb = {r[0] for r in duckdb_store(engine).query(duck.render(query), ())}
        on_postgres = pg.members(GOLDEN_PROJECT, name, at)
        assert on_postgres == on_duckdb, name
        assert test_compile.users(engine, list(on_postgres)) == expected[name], name
    # An audience: its segment minus the exclusions.
    audience = Audience("promo", "email_promo", exclude=("lapsed_vip", "cart_abandon"))
    project = replace(GOLDEN_PROJECT, audiences={"promo": audience})
    query = duck.compile_audience("promo", project, at)
    on_duckdb = {r[0] for r in duckdb_store(engine).query(duck.render(query), ())}
    on_postgres = set(
        pg.ids(pg.compiler.render(pg.compiler.compile_audience("promo", project, at)))
    )
    assert on_postgres == on_duckdb


def test_one_query_for_all_segments_agrees_on_postgres(
    engine: Engine, pg_empty: PgSegments
) -> None:
    """The members test's project (sum and most_frequent traits, refs, has) on both engines."""
    pg = pg_empty
    test_members.ingest(engine)
    pg.copy_from(engine, {t: "TRUE OR ? IS NULL" for t in TABLES}, "")
    at = test_members.AT_US
    duck = DuckDBCompiler()
    on_postgres = pg.all_members(test_members.PROJECT, at)
    for name in test_members.PROJECT.segments:
        query = duck.compile_segment(name, test_members.PROJECT, at)
        on_duckdb = {r[0] for r in duckdb_store(engine).query(duck.render(query), ())}
        assert on_postgres[name] == on_duckdb, name
        assert pg.members(test_members.PROJECT, name, at) == on_duckdb, name
    assert on_postgres["vip"], "the project has members to compare"


@pytest.mark.parametrize(
    ("dialect", "compiler"), [("duckdb", DuckDBCompiler), ("postgres", PostgresCompiler)]
)
def test_each_store_dialect_gets_its_compiler(dialect: str, compiler: type[Compiler]) -> None:
    assert type(compiler_for(dialect)) is compiler


def test_an_unknown_dialect_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="no segment compiler for the SQL dialect 'oracle'"):
        compiler_for("oracle")


# --- the engine on a Postgres store ---------------------------------------------------------

DEMO_NOW = datetime(2026, 1, 10, 12, tzinfo=UTC)


def _demo_members(directory: Path, store: str) -> tuple[dict[str, int], dict[str, Any]]:
    """`cohortsync compute` then `members` of every audience, for the demo project on `store`:
    the sizes compute reported, each audience's members as listed, each segment's members."""
    scaffold_project(directory)
    path = directory / "cohortsync.yml"
    text = path.read_text(encoding="utf-8")
    text = text.replace("store: .cohortsync/store.duckdb", f"store: {store}")
    # A half held out, so a small shop has holdout members to compare.
    path.write_text(text.replace("holdout: {percent: 10}", "holdout: {percent: 50}"), "utf-8")
    with Engine.open(directory) as engine:
        engine.ingest_messages(generate_shop(120, seed=7, now=DEMO_NOW), source="demo")
        audiences = list(engine.segments.audiences)
    runner = CliRunner()
    base = ["--project", str(directory)]
    done = runner.invoke(app, ["compute", *base, "--at", DEMO_NOW.isoformat(), "--json"])
    assert done.exit_code == 0, done.output
    sizes = {f"{r['kind']}:{r['name']}": r["size"] for r in json.loads(done.stdout)["rows"]}
    listed: dict[str, Any] = {}
    for name in audiences:  # holdout flags included
        shown = runner.invoke(app, ["members", name, *base, "--format", "json"])
        assert shown.exit_code == 0, shown.output
        listed[name] = json.loads(shown.stdout)
    with Engine.open(directory) as engine:
        for name in engine.segments.segments:
            listed[f"segment:{name}"] = [m.profile_id for m in engine.members(name)]
    return sizes, listed


def test_demo_project_computes_the_same_members_on_postgres_as_on_duckdb(
    tmp_path: Path,
) -> None:
    on_duckdb = _demo_members(tmp_path / "duckdb", ".cohortsync/store.duckdb")
    with postgres_schema("demo") as url:
        on_postgres = _demo_members(tmp_path / "postgres", url)
    assert on_postgres[0] == on_duckdb[0]
    assert on_postgres[1] == on_duckdb[1]
    assert sum(on_duckdb[0].values()) > 0, "the demo shop fills some audiences"
    assert any(
        m["holdout"] for members in on_duckdb[1].values() for m in members if isinstance(m, dict)
    ), "a holdout is compared too"


@pytest.mark.parametrize(
    "text", ['say "hi"', "back\\slash", "two\nlines", "it's", "😀 emoji", "tab\there", "a/b~c"]
)
def test_strings_needing_json_escapes_compare_exactly(
    shared_engine: Engine, pg: PgSegments, text: str
) -> None:
    """Equality, `in`, order and `contains` on strings whose JSON text has escapes."""
    people = [
        {"user": "u0", "traits": {}, "email": False,
         "events": [("product_viewed", H, {"category": text})]},
        {"user": "u1", "traits": {}, "email": False,
         "events": [("product_viewed", H, {"category": text + "x"})]},
    ]  # fmt: skip
    for op, value in [("eq", text), ("in", [text, 5]), ("ne", text), ("gt", text),
                      ("contains", text[-3:]), ("lte", text)]:  # fmt: skip
        cond = EventCondition("product_viewed", where=(Comparison("category", op, value),))
        check_pg(shared_engine, pg, people, one_segment(cond), ANCHOR_US)
