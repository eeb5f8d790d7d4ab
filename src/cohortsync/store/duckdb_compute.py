"""Reading a compute's results from DuckDB: one query, read as Arrow."""

from __future__ import annotations

from collections.abc import Mapping

import duckdb
import pyarrow as pa


def query_arrow(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """Run `sql` (its last statement's rows) as one Arrow table."""
    result = con.sql(sql)
    return pa.table({}) if result is None else result.to_arrow_table()


def flagged_members(
    con: duckdb.DuckDBPyConnection, sql: str, columns: Mapping[str, str]
) -> dict[str, list[str]]:
    """Run `sql` once (`profile_id` and one boolean column per segment, one row per profile);
    the sorted member ids of each segment, by name (`columns` maps names to flag columns)."""
    table = con.sql(sql).to_arrow_table()
    ids = table.column("profile_id")
    return {
        name: sorted(str(v) for v in ids.filter(table.column(column)).to_pylist())
        for name, column in columns.items()
    }
