"""Conversion planning benchmark: what `serve` pays every 10 s under the store lock.

Run:  .venv/bin/python bench/conversions.py [--events N ...] [--repeat R] [--postgres URL]

On a copy of the segments benchmark's store (bench/out/segments-<N>-by-time, built by
bench/segments.py when missing), with two conversion rules on `order_completed` (so 2 queued
conversions per order), each timed as `DuckDBOutbox.plan_conversions` runs it:

- whole log, first: every order planned (the first planning of a process);
- whole log, nothing new: the same again once everything is in the ledger, on the store opened
  anew (best of R) — what every planning cost before plans were incremental, and what the
  10-minute full planning still costs;
- since the last planning, nothing new: the usual case between two plans (best of R);
- since the last planning, 500 new orders: the rows appended to `events` in SQL first.

Baseline, side by side: the hand-written query that lists the unplanned conversions of the
whole log (`events` anti-joined with the ledger), without writing them anywhere. With
`--postgres URL`, the same on a Postgres store of --pg-events (default 1M) events.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from urllib.parse import quote

import psycopg
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from cohortsync.config.scaffold import scaffold_project
from cohortsync.demo.shop import generate_shop
from cohortsync.engine import Engine
from cohortsync.store.base import Store
from cohortsync.store.duckdb_store import DuckDBStore
from cohortsync.store.opening import open_store
from cohortsync.store.outbox import ConversionRoute
from cohortsync.sync.ledger import ledger_for
from segments import EVENTS_PER_PROFILE, NOW, _store_file, best_of, ensure_store

console = Console(width=120)
ROUTES = [
    ConversionRoute("warehouse", "order_completed", "Purchase", "revenue", "USD"),
    ConversionRoute("meta_capi", "order_completed", "Purchase", "revenue", "USD"),
]
HAND = """
    SELECT count(*) FROM events e
    JOIN (VALUES ('warehouse'), ('meta_capi')) r(destination) ON e.event = 'order_completed'
    WHERE e.type = 'track' AND NOT EXISTS (
        SELECT 1 FROM conversion_ledger l
        WHERE l.destination = r.destination AND l.message_id = e.message_id)
"""


def measure(
    title: str, opened: Callable[[], Store], append_orders: str, hand: str, repeat: int
) -> None:
    """Time the plannings on a store (`opened` opens it anew, as a new process would)."""
    store = opened()

    def plan() -> int:
        return ledger_for(store).plan_conversions(ROUTES, datetime.now(UTC)).conversions

    rows: list[tuple[str, float, int]] = []
    ms, n = best_of(1, plan)
    rows.append(("whole log, first", ms, n))
    best = float("inf")
    for _ in range(repeat):  # each a first planning again, as after a restart
        store.close()
        store = opened()
        ms, n = best_of(1, plan)
        best = min(best, ms)
    rows.append(("whole log, nothing new", best, n))
    ms, n = best_of(repeat, plan)
    rows.append(("since the last planning, nothing new", ms, n))
    store.query(append_orders)
    ms, n = best_of(1, plan)
    rows.append(("since the last planning, 500 new orders", ms, n))
    ms, found = best_of(repeat, lambda: store.query(hand))
    rows.append(("hand SQL: unplanned conversions of the whole log", ms, int(found[0][0])))
    total = store.query("SELECT count(*) FROM events")[0][0]
    store.close()
    table = Table(title=f"{title}, {total:,} events: conversion planning")
    for col in ("planning", "ms", "conversions"):
        table.add_column(col, justify="left" if col == "planning" else "right")
    for label, ms, n in rows:
        table.add_row(label, f"{ms:.1f}", f"{n:,}")
    console.print(table)
    usual, before = rows[2][1], rows[1][1]
    console.print(
        f"  a usual planning: {usual:.1f} ms, {before / usual:.0f}x less than a whole log"
    )


def run_duckdb(events: int, repeat: int) -> None:
    source = _store_file(ensure_store(events, 1_000_000))
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "store.duckdb"
        shutil.copyfile(source, copy)
        DuckDBStore(copy).migrate()
        append = (
            "INSERT INTO events SELECT * REPLACE (message_id || '~new' AS message_id) "
            "FROM events WHERE event_key = 'order_completed' LIMIT 500"
        )
        measure("DuckDB", lambda: DuckDBStore(copy), append, HAND, repeat)


def run_postgres(url: str, events: int, repeat: int) -> None:
    """The same on Postgres: the demo shop ingested through the engine into a schema of its
    own (kept between runs: the conversions planned by an earlier run are not planned again)."""
    schema = f"bench_conversions_{events}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")  # type: ignore[arg-type]
        built = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
            "AND table_name = 'conversion_cursors'",
            (schema,),
        ).fetchone()
    located = f"{url}?options={quote(f'-csearch_path={schema}')}"
    if not built:
        with tempfile.TemporaryDirectory() as folder:
            scaffold_project(Path(folder), force=True)
            settings = Path(folder) / "cohortsync.yml"
            settings.write_text(
                "\n".join(
                    f"store: {located}" if line.startswith("store:") else line
                    for line in settings.read_text(encoding="utf-8").splitlines()
                ),
                encoding="utf-8",
            )
            started = time.perf_counter()
            profiles = max(100, round(events / EVENTS_PER_PROFILE))
            with Engine.open(Path(folder)) as engine:
                shop = sorted(generate_shop(profiles, seed=7, now=NOW), key=itemgetter("timestamp"))
                engine.ingest_messages(shop, source="demo")
            console.print(f"  built {schema} in {time.perf_counter() - started:.0f} s")
    append = (
        "INSERT INTO events (message_id, type, source, event, event_key, profile_id, "
        '"timestamp", original_timestamp, received_at, properties) '
        "SELECT message_id || '~' || gen_random_uuid(), type, source, event, event_key, "
        'profile_id, "timestamp", original_timestamp, received_at, properties FROM events '
        "WHERE event_key = 'order_completed' LIMIT 500"
    )
    measure("Postgres", lambda: open_store(located), append, HAND, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres", metavar="URL", help="also a Postgres store of --pg-events")
    parser.add_argument("--pg-events", type=int, default=1_000_000)
    args = parser.parse_args()
    for events in args.events:
        run_duckdb(events, args.repeat)
    if args.postgres:
        run_postgres(args.postgres, args.pg_events, args.repeat)


if __name__ == "__main__":
    main()
