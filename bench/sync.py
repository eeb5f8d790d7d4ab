"""Sync benchmark: planning and delivering N changes to the warehouse and to a webhook receiver.

Run:  .venv/bin/python bench/sync.py [--changes N] [--quick]

A fresh project and store per run, holding N members of one audience (10% holdout) with an
email and a user id each, written straight into the store's tables (the state a compute
leaves; computing is measured by bench/segments.py). The audience is routed to two
destinations: `warehouse` (a DuckDB file) and `hook` (the Standard Webhooks contract fake of
tests/fakes, served by uvicorn in this process, verifying every signature). Timed, each once:

- plan: the outbox rows both routes need (2·N changes), one transaction;
- deliver → warehouse: claim, send, record, until the outbox is empty for it;
- deliver → webhook: the same over HTTP, 500 changes a request;
- baseline, warehouse: the same N rows as one Arrow table inserted straight into a table of
  the warehouse's `audience_members` shape in a fresh DuckDB file;
- baseline, webhook: the same number of signed POSTs of the same size sent by one httpx client.

Every change must arrive: the warehouse table and the receiver both hold N members after.

With `--platforms`, each ad platform's fake instead (bench/sync_platforms.py): 100k records
each by default, 10k with `--quick`.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pyarrow as pa
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sync_platforms import report as report_platforms
from bench.sync_platforms import run as run_platforms
from bench.sync_platforms import seed_people
from tests.fakes.webhook import WebhookFake

from cohortsync.destinations.signing import sign
from cohortsync.engine import Engine
from cohortsync.sync.ledger import ledger_for
from cohortsync.sync.retry import RetryPolicy
from cohortsync.sync.worker import Deliverer

AUDIENCE = "cio_bench"
console = Console(width=130)


def project_yaml(url: str, secret: str) -> str:
    return f"""\
store: .cohortsync/store.duckdb
sources: {{web: {{write_key: wk_bench_0123456789}}}}
segments:
  anyone: {{event: added_to_cart}}
audiences:
  {AUDIENCE}:
    segment: anyone
    holdout: {{percent: 10}}
    destinations: [warehouse, hook]
destinations:
  warehouse: {{type: warehouse, url: "duckdb:///warehouse.duckdb"}}
  hook: {{type: webhook, url: "{url}", secret: "{secret}"}}
"""


def seed_members(engine: Engine, n: int) -> None:
    """N profiles with an email and a user id, all current members of the audience, one in ten
    held out."""
    seed_people(engine, n, members=True, holdout_share=10)


def timed(label: str, work: Callable[[], Any]) -> tuple[float, Any]:
    console.print(f"  {label} …", end="")
    started = time.perf_counter()
    result = work()
    elapsed = time.perf_counter() - started
    console.print(f" {elapsed:.2f} s")
    return elapsed, result


def baseline_warehouse(n: int, folder: Path) -> float:
    """The same rows as one Arrow table, inserted straight into a fresh DuckDB table."""
    now = datetime.now(UTC)
    table = pa.table(
        {
            "audience": pa.array([AUDIENCE] * n),
            "profile_id": pa.array([f"p{i}" for i in range(n)]),
            "holdout": pa.array([i % 10 == 0 for i in range(n)]),
            "user_id": pa.array([f"u{i}" for i in range(n)]),
            "email": pa.array([f"person{i}@example.com" for i in range(n)]),
            "phone": pa.nulls(n, pa.string()),
            "anonymous_id": pa.nulls(n, pa.string()),
            "entered_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            "updated_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        }
    )
    con = duckdb.connect(str(folder / "baseline.duckdb"))
    con.execute(
        "CREATE TABLE audience_members (audience VARCHAR, profile_id VARCHAR, holdout BOOLEAN, "
        "user_id VARCHAR, email VARCHAR, phone VARCHAR, anonymous_id VARCHAR, "
        "entered_at TIMESTAMPTZ, updated_at TIMESTAMPTZ, PRIMARY KEY (audience, profile_id))"
    )
    started = time.perf_counter()
    con.register("rows", table)
    con.execute("INSERT INTO audience_members SELECT * FROM rows")
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


def baseline_webhook(n: int, url: str, secret: str, batch: int = 500) -> float:
    """The same number of signed POSTs, of the same shape, from one httpx client."""
    bodies = []
    for start in range(0, n, batch):
        changes = [
            {
                "change_id": i,
                "operation": "add",
                "profile_id": f"p{i}",
                "holdout": i % 10 == 0,
                "at": "2026-11-29T00:00:00Z",
                "identifiers": {"email": f"person{i}@example.com", "user_id": f"u{i}"},
            }
            for i in range(start, min(n, start + batch))
        ]
        bodies.append(orjson.dumps({"type": "audience.changes", "data": {"changes": changes}}))
    started = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        for number, body in enumerate(bodies):
            msg_id = f"baseline_{number}"
            ts = int(time.time())
            client.post(
                url,
                content=body,
                headers={
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(ts),
                    "webhook-signature": sign(secret, msg_id, ts, body),
                    "content-type": "application/json",
                },
            ).raise_for_status()
    return time.perf_counter() - started


def run(n: int) -> list[tuple[str, float, int]]:
    console.print(f"[bold]{n:,} members → warehouse and webhook[/]")
    folder = Path(tempfile.mkdtemp(prefix="cohortsync-bench-sync-"))
    rows: list[tuple[str, float, int]] = []
    try:
        with WebhookFake().serving() as hook:
            (folder / "cohortsync.yml").write_text(project_yaml(hook.url, hook.secret))
            with Engine.open(folder) as engine:
                seed_members(engine, n)
                setup = engine.sync_setup
                outbox = ledger_for(engine.store)
                now = datetime.now(UTC)
                seconds, planned = timed("plan both routes", lambda: outbox.plan(setup.routes, now))
                rows.append(("plan (both routes)", seconds, planned.total))
                policy = RetryPolicy(rng=random.Random(1))
                with httpx.Client(timeout=60) as http:
                    opened = setup.open(folder, http, lambda: datetime.now(UTC))
                    for name, label in (
                        ("warehouse", "deliver → warehouse"),
                        ("hook", "deliver → webhook"),
                    ):
                        deliverer = Deliverer(
                            outbox,
                            {name: opened[name]},
                            policy,
                            lambda: datetime.now(UTC),
                            setup.identifiers,
                        )
                        seconds, delivery = timed(label, deliverer.run)
                        acked = delivery.total("acknowledged")
                        rows.append((label, seconds, acked))
                    for d in opened.values():
                        d.close()
            received = sum(len(body["data"]["changes"]) for _, body in hook.applied)
            warehouse = duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True)
            stored = warehouse.execute(
                "SELECT count(*) FROM cohortsync.audience_members"
            ).fetchall()[0][0]
            warehouse.close()
            assert stored == n, f"warehouse holds {stored:,} members, expected {n:,}"
            assert received == n, f"receiver got {received:,} changes, expected {n:,}"
            seconds = baseline_warehouse(n, folder)
            rows.append(("baseline: Arrow insert into the table", seconds, n))
            before = len(hook.applied)
            seconds = baseline_webhook(n, hook.url, hook.secret)
            assert len(hook.applied) - before == (n + 499) // 500
            rows.append(("baseline: signed POSTs from httpx", seconds, n))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def report(n: int, rows: list[tuple[str, float, int]]) -> None:
    by_label = {label: seconds for label, seconds, _ in rows}
    table = Table(title=f"{n:,} members (one audience, two destinations)", title_justify="left")
    for column in ("step", "seconds", "changes", "changes/s", "vs baseline"):
        table.add_column(column, justify="left" if column == "step" else "right")
    baselines = {
        "deliver → warehouse": by_label["baseline: Arrow insert into the table"],
        "deliver → webhook": by_label["baseline: signed POSTs from httpx"],
    }
    for label, seconds, count in rows:
        ratio = f"{seconds / baselines[label]:.1f}×" if label in baselines else ""
        table.add_row(label, f"{seconds:.2f}", f"{count:,}", f"{count / seconds:,.0f}", ratio)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--changes", type=int, default=None, help="members (default 1M; platforms: 100k)"
    )
    parser.add_argument("--quick", action="store_true", help="100k members (platforms: 10k)")
    parser.add_argument(
        "--platforms", action="store_true", help="each ad platform's fake beside a bare client"
    )
    args = parser.parse_args()
    console.print(
        f"python {platform.python_version()}, duckdb {duckdb.__version__}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    if args.platforms:
        n = args.changes or (10_000 if args.quick else 100_000)
        report_platforms(n, run_platforms(n, console), console)
        return
    n = args.changes or (100_000 if args.quick else 1_000_000)
    report(n, run(n))


if __name__ == "__main__":
    main()
