"""The DuckDB and Postgres stores declare the same tables, columns, types, nullability and keys.

Both schemas are written out per engine today (`store/duckdb_schema.py`,
`store/postgres_schema.py`); this test keeps them in step. What one engine has and the other
lacks is listed below with the reason, so a column added to one schema alone fails here until
it is added to both or listed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cohortsync.store.base import Store
from cohortsync.store.duckdb_store import DuckDBStore
from cohortsync.store.postgres_store import PostgresStore
from tests.postgres import postgres_schema

COLUMNS = (
    "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
    "WHERE table_schema = current_schema()"
)
KEYS = (
    "SELECT tc.table_name, kcu.column_name, tc.constraint_type "
    "FROM information_schema.table_constraints tc "
    "JOIN information_schema.key_column_usage kcu ON kcu.constraint_name = tc.constraint_name "
    "AND kcu.table_name = tc.table_name AND kcu.table_schema = tc.table_schema "
    "WHERE tc.table_schema = current_schema() AND tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE')"
)

# Engine-specific tables and columns, each for a reason of that engine alone.
DUCKDB_ONLY = {
    "counters": "one writer hands out ids; Postgres uses sequences",
    "event_summaries": "per-profile summaries the DuckDB compiler reads",
    "property_summaries": "per-profile summaries the DuckDB compiler reads",
    "summarised_properties": "per-profile summaries the DuckDB compiler reads",
}
POSTGRES_ONLY = {
    "conversion_cursors": "several planners: each remembers the snapshot it planned below",
    "realtime_pending": "several workers: profiles marked pending by the storing transaction",
    "events.written_by": "the transaction that stored an event, for incremental planning",
}
# The same logical type under each engine's name.
SAME_TYPE = {
    "VARCHAR": "text",
    "TIMESTAMP WITH TIME ZONE": "timestamp with time zone",
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "JSON": "jsonb",
    "DOUBLE": "double precision",
    "BOOLEAN": "boolean",
    "DATE": "date",
}


@pytest.fixture
def duckdb_store(tmp_path: Path) -> Iterator[DuckDBStore]:
    store = DuckDBStore(tmp_path / "store.duckdb")
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def postgres_store() -> Iterator[PostgresStore]:
    with postgres_schema() as url:
        store = PostgresStore(url)
        store.migrate()
        yield store
        store.close()


def _columns(store: Store, only: dict[str, str]) -> dict[tuple[str, str], tuple[str, str]]:
    rows = store.query(COLUMNS)
    return {
        (table, column): (kind, nullable)
        for table, column, kind, nullable in rows
        if table not in only and f"{table}.{column}" not in only
    }


def _keys(store: Store, only: dict[str, str]) -> set[tuple[str, str, str]]:
    return {row for row in store.query(KEYS) if row[0] not in only}


def test_both_stores_declare_the_same_columns_types_and_nullability(
    duckdb_store: DuckDBStore, postgres_store: PostgresStore
) -> None:
    duck = _columns(duckdb_store, DUCKDB_ONLY)
    postgres = _columns(postgres_store, POSTGRES_ONLY)
    assert sorted(set(duck) - set(postgres)) == [], "columns only the DuckDB schema declares"
    assert sorted(set(postgres) - set(duck)) == [], "columns only the Postgres schema declares"
    differing = {
        column: (duck[column], postgres[column])
        for column in duck
        if SAME_TYPE.get(duck[column][0]) != postgres[column][0]
        or duck[column][1] != postgres[column][1]
    }
    assert differing == {}, "columns whose type or nullability differ between the engines"


def test_both_stores_declare_the_same_keys(
    duckdb_store: DuckDBStore, postgres_store: PostgresStore
) -> None:
    duck = _keys(duckdb_store, DUCKDB_ONLY)
    postgres = _keys(postgres_store, POSTGRES_ONLY)
    assert duck, "the DuckDB schema declares primary keys"
    assert duck == postgres


def test_engine_specific_tables_exist_where_listed(
    duckdb_store: DuckDBStore, postgres_store: PostgresStore
) -> None:
    """The lists above name only what is really there, so none outlives its table."""
    duck_tables = {table for table, *_ in duckdb_store.query(COLUMNS)}
    postgres = {(table, column) for table, column, *_ in postgres_store.query(COLUMNS)}
    postgres_tables = {table for table, _ in postgres}
    for name in DUCKDB_ONLY:
        assert name in duck_tables and name not in postgres_tables, name
    for name in POSTGRES_ONLY:
        table, _, column = name.partition(".")
        if column:
            assert (table, column) in postgres, name
        else:
            assert table in postgres_tables and table not in duck_tables, name
