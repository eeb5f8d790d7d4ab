"""Warehouse destination timing: one 50,000-change batch on a DuckDB file and on Postgres.

Run:  .venv/bin/python bench/warehouse.py [--size N] [--postgres URL]

Per engine, in a fresh DuckDB file (temporary folder) or a fresh Postgres schema (dropped at
the end): N adds in one batch, then one batch of N/2 removes and N/2 new adds, then the first
batch resent (acknowledged without writing). Prints wall time and changes per second; figures
are indicative (2 shared cores) and never asserted anywhere.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

from cohortsync.destinations.base import Batch, Change, DestinationContext
from cohortsync.destinations.warehouse import WarehouseConfig, WarehouseDestination

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def batches(size: int) -> list[Batch]:
    """N adds; N/2 removes and N/2 new adds; the first batch again."""

    def made(change_id: int, op: str, profile: str) -> Change:
        at = T0 + timedelta(seconds=change_id)
        ids = {"email": f"{profile}@example.com", "user_id": profile}
        return Change(change_id, "cio_cart_abandon_6h", profile, op, change_id % 10 == 0, at, ids)  # type: ignore[arg-type]

    half = size // 2
    first = Batch("big1", "a", tuple(made(i, "add", f"p{i}") for i in range(1, size + 1)))
    second = Batch(
        "big2",
        "a",
        tuple(made(size + i, "remove", f"p{i}") for i in range(1, half + 1))
        + tuple(made(2 * size + i, "add", f"q{i}") for i in range(1, half + 1)),
    )
    return [first, second, first]


def run(url: str, project_dir: Path, schema: str, size: int) -> None:
    """Time the three batches against one database and print one line each."""
    config = WarehouseConfig.model_validate({"type": "warehouse", "url": url, "schema": schema})
    with httpx.Client() as http:
        context = DestinationContext("warehouse", project_dir, http, lambda: T0)
        dest = WarehouseDestination(config, context)
        engine = "duckdb" if url.startswith("duckdb") else "postgres"
        try:
            for label, batch in zip(("adds", "mixed", "resend"), batches(size), strict=True):
                start = time.perf_counter()
                stats = dest.apply(batch).stats
                took = time.perf_counter() - start
                rate = len(batch.changes) / took
                print(
                    f"{engine:8} {label:6} {len(batch.changes):>7,} changes  {took * 1000:8.1f} ms"
                    f"  {rate:>10,.0f} changes/s  {dict(stats)}"
                )
        finally:
            dest.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run("duckdb:///warehouse.duckdb", Path(folder), "cohortsync", args.size)
    schema = f"cs_bench_{uuid.uuid4().hex[:8]}"
    try:
        run(args.postgres, Path.cwd(), schema, args.size)
    except psycopg.Error as exc:
        print(f"postgres skipped: {exc}")
    finally:
        try:
            with psycopg.connect(args.postgres, autocommit=True, connect_timeout=3) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        except psycopg.Error:
            pass


if __name__ == "__main__":
    main()
