"""Ingest benchmark: file ingest, HTTP /v1/batch throughput and /v1/track latency.

Run:  .venv/bin/python bench/ingest.py [--events N] [--http-events M] [--quick]

Every measure runs on a fresh temporary project (its own DuckDB file) and stands beside a
baseline: a pure-parse loop for files, and the "limit" — appending the very same rows from a
prebuilt Arrow table straight into a DuckDB `events` table with the store's schema (incl. the
PRIMARY KEY). The HTTP measures start the real server (`cohortsync serve`) in a separate
process and talk to it over 127.0.0.1 only. All loops are bounded; the process stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from cohortsync.demo.shop import generate_shop
from cohortsync.engine import Engine
from cohortsync.events.timestamps import now_micros
from cohortsync.events.validate import content_message_id, validate_message
from cohortsync.store.duckdb_schema import MIGRATIONS
from cohortsync.store.message_table import messages_table
from cohortsync.store.records import Message
from rawclient import RawClient
from serving import stop_gracefully

WRITE_KEY = "wk_bench_0123456789"
PROJECT_YAML = f"""\
store: .cohortsync/store.duckdb
identity:
  primary: email
  secondary: [phone]
  default_region: US
sources:
  web:
    write_key: {WRITE_KEY}
"""
NOW = datetime(2026, 1, 1, tzinfo=UTC)  # fixed, so runs are reproducible
BATCH_SIZE = 100  # analytics-python's default upload_size
AIM_FILE = 100_000.0
AIM_HTTP = 20_000.0
AIM_P99_MS = 50.0
TRACK_DEADLINE = 10.0  # a /v1/track request still unanswered after this counts as failed

console = Console()


# --------------------------------------------------------------------------- helpers


def make_project(root: Path) -> Path:
    """A fresh project folder with a known write key (as tests/conftest.py does)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cohortsync.yml").write_text(PROJECT_YAML, encoding="utf-8")
    return root


def demo_messages(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` realistic Segment messages from the demo shop (~32 per profile)."""
    profiles = count // 25 + 10
    return list(itertools.islice(generate_shop(profiles, seed, NOW), count))


def event_count(project: Path) -> int:
    with Engine.open(project) as engine:
        return int(engine.store.query("SELECT count(*) FROM events")[0][0])


def arrow_rows(raws: Sequence[dict[str, Any]]) -> pa.Table:
    """The same rows the store would append, as one Arrow table (built outside any timing)."""
    received = now_micros()
    messages = [
        m
        for i, raw in enumerate(raws)
        if isinstance(
            m := validate_message(
                raw,
                source="bench",
                received_at_us=received,
                origin=f"bench#{i}",
                new_id=content_message_id,
            ),
            Message,
        )
    ]
    profile_ids = [f"prof-{m.anonymous_id or m.user_id}" for m in messages]
    return messages_table(messages, profile_ids)


def arrow_limit(table: pa.Table, workdir: Path) -> float:
    """Seconds to append `table` into a fresh DuckDB file with the store's schema."""
    path = workdir / f"limit-{time.monotonic_ns()}.duckdb"
    con = duckdb.connect(str(path))
    try:
        for _, _, sql in MIGRATIONS:
            con.execute(sql)
        con.register("arrow_table", table)
        start = time.perf_counter()
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO events SELECT * FROM arrow_table")
        con.execute("COMMIT")
        elapsed = time.perf_counter() - start
        stored = con.execute("SELECT count(*) FROM events").fetchone()
        assert stored is not None and stored[0] == table.num_rows, (stored, table.num_rows)
        return elapsed
    finally:
        con.close()


@dataclass
class Row:
    measure: str
    ours: str
    baseline: str
    ratio: str
    aim: str
    met: bool | None


def rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f} ev/s" if seconds > 0 else "-"


# --------------------------------------------------------------------------- 1. file ingest


def bench_file(events: int, workdir: Path) -> list[Row]:
    console.print(f"[bold]1. file ingest[/] — generating {events:,} demo messages…")
    raws = demo_messages(events, seed=7)
    path = workdir / "events.jsonl"
    with path.open("wb") as out:
        for raw in raws:
            out.write(orjson.dumps(raw) + b"\n")
    size_mb = path.stat().st_size / 1e6

    start = time.perf_counter()
    with path.open("rb") as src:
        parsed = sum(1 for line in src if orjson.loads(line) is not None)
    parse_s = time.perf_counter() - start
    assert parsed == len(raws)

    project = make_project(workdir / "file-project")
    engine = Engine.open(project)
    start = time.perf_counter()
    report = engine.ingest_file(path)
    engine.close()  # timed too: closing checkpoints what is still only in the WAL
    ingest_s = time.perf_counter() - start
    stored = event_count(project)

    table = arrow_rows(raws)
    limit_s = arrow_limit(table, workdir)
    del table

    ours = len(raws) / ingest_s
    console.print(
        f"   {len(raws):,} rows, {size_mb:.0f} MB JSONL; ingest_file {ingest_s:.2f} s, "
        f"stored {stored:,} (result {report.result}); parse {parse_s:.2f} s; "
        f"arrow append {limit_s:.3f} s"
    )
    return [
        Row(
            "file: ingest_file (JSONL)",
            rate(len(raws), ingest_s),
            f"{rate(len(raws), limit_s)} (Arrow append)",
            f"{ours / (len(raws) / limit_s):.3f}×",
            f"≥ {AIM_FILE:,.0f} ev/s",
            ours >= AIM_FILE,
        ),
        Row(
            "file: orjson.loads per line",
            rate(len(raws), parse_s),
            "",
            f"ingest = {ingest_s / parse_s:.1f}× parse time",
            "(where time goes)",
            None,
        ),
    ]


# --------------------------------------------------------------------------- server process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(project: Path) -> Iterator[str]:
    """`cohortsync serve` in its own process; stopped (SIGINT, graceful) on exit."""
    port = free_port()
    cmd = [
        sys.executable,
        "-c",
        "from cohortsync.cli import main; main()",
        "serve",
        "--project",
        str(project),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not answer /health within 30 s")
            time.sleep(0.05)
        yield url
    finally:
        stop_gracefully(proc)


async def send_batches(url: str, bodies: list[bytes], sizes: list[int], concurrency: int) -> dict:
    """Send every body once from `concurrency` workers; count what got a 200."""
    accepted = 0
    statuses: dict[int, int] = {}
    queue = iter(range(len(bodies)))
    async with RawClient(url, concurrency, WRITE_KEY) as client:
        requests = [client.request("/v1/batch", body) for body in bodies]

        async def worker() -> None:
            nonlocal accepted
            for index in queue:  # shared iterator: each body is sent once
                status, answer = await client.send(requests[index])
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    accepted += orjson.loads(answer).get("accepted", sizes[index])

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"accepted": accepted, "statuses": statuses, "seconds": elapsed}


def bench_http_batch(events: int, concurrency: int, workdir: Path) -> list[Row]:
    console.print(f"[bold]2. HTTP /v1/batch[/] — {events:,} events, {concurrency} in flight…")
    raws = demo_messages(events, seed=11)
    sent_at = "2026-01-01T00:00:00.000Z"
    bodies, sizes = [], []
    for i in range(0, len(raws), BATCH_SIZE):
        chunk = raws[i : i + BATCH_SIZE]
        bodies.append(orjson.dumps({"batch": chunk, "sentAt": sent_at}))
        sizes.append(len(chunk))

    project = make_project(workdir / "http-project")
    with server(project) as url:
        result = asyncio.run(send_batches(url, bodies, sizes, concurrency))
    stored = event_count(project)  # opened only after the server process has exited
    durable = stored == result["accepted"]

    table = arrow_rows(raws)
    limit_s = arrow_limit(table, workdir)
    seconds = result["seconds"]
    ours = result["accepted"] / seconds
    limit = table.num_rows / limit_s
    console.print(
        f"   {len(bodies):,} requests in {seconds:.2f} s, statuses {result['statuses']}; "
        f"200-acknowledged {result['accepted']:,}, stored after shutdown {stored:,} "
        f"({'equal' if durable else 'MISMATCH'}); arrow append {limit_s:.3f} s"
    )
    return [
        Row(
            f"HTTP /v1/batch ({BATCH_SIZE}/req, {concurrency} in flight)",
            rate(result["accepted"], seconds),
            f"{limit:,.0f} ev/s (Arrow append)",
            f"{ours / limit:.3f}×",
            f"≥ {AIM_HTTP:,.0f} ev/s",
            ours >= AIM_HTTP,
        ),
        Row(
            "HTTP batch: stored == acknowledged",
            f"{stored:,}",
            f"{result['accepted']:,} got 200",
            "",
            "equal",
            durable,
        ),
    ]


# --------------------------------------------------------------------------- 3. /v1/track latency


async def open_loop(url: str, bodies: list[bytes], warmup: list[bytes], rps: float) -> dict:
    """Send request i at start + i/rps whatever the answers do (open loop).

    A request that fails (e.g. times out after 10 s) still counts, with the time it took, so the
    percentiles are never flattered by dropping slow requests.
    """
    latencies: list[float] = []  # from the scheduled send time (no coordinated omission)
    service: list[float] = []  # from the actual send time
    statuses: dict[int, int] = {}
    async with RawClient(url, 256, WRITE_KEY) as client:
        for body in warmup:  # the first commit pays one-off imports; not part of the measure
            await client.send(client.request("/v1/track", body))
        requests = [client.request("/v1/track", body) for body in bodies]

        async def one(request: bytes, due: float) -> None:
            sent = time.perf_counter()
            try:
                code, _ = await asyncio.wait_for(client.send(request), TRACK_DEADLINE)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                code = -1  # failed or gave up after TRACK_DEADLINE s
            done = time.perf_counter()
            statuses[code] = statuses.get(code, 0) + 1
            latencies.append(done - due)
            service.append(done - sent)

        tasks = []
        start = time.perf_counter()
        for i, request in enumerate(requests):
            due = start + i / rps
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(request, due)))
        sent_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
        total_s = time.perf_counter() - start
    return {
        "latencies": latencies,
        "service": service,
        "statuses": statuses,
        "sent_s": sent_s,
        "total_s": total_s,
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000


def bench_track(rps: float, seconds: float, workdir: Path) -> list[Row]:
    count = min(5_000, int(rps * seconds))
    console.print(f"[bold]3. /v1/track latency[/] — open loop {rps:.0f} req/s, {count:,} requests…")
    warm = 20
    tracks = [m for m in demo_messages(count * 3, seed=13) if m["type"] == "track"]
    assert len(tracks) >= count + warm, len(tracks)
    bodies = [orjson.dumps(m) for m in tracks[: count + warm]]

    project = make_project(workdir / "track-project")
    with server(project) as url:
        result = asyncio.run(open_loop(url, bodies[warm:], bodies[:warm], rps))
    stored = event_count(project)
    lat, svc = result["latencies"], result["service"]
    achieved = result["statuses"].get(200, 0) / result["total_s"]
    offered = count / result["sent_s"] if result["sent_s"] else float("nan")
    p50, p95, p99 = pct(lat, 50), pct(lat, 95), pct(lat, 99)
    console.print(
        f"   statuses {result['statuses']}; offered {offered:,.0f} req/s, completed "
        f"{achieved:,.0f} req/s; p50/p95/p99 {p50:.1f}/{p95:.1f}/{p99:.1f} ms from schedule, "
        f"{pct(svc, 50):.1f}/{pct(svc, 95):.1f}/{pct(svc, 99):.1f} ms from send; "
        f"max {max(lat) * 1000:.1f} ms; stored {stored:,} (incl. {warm} warm-up)"
    )
    return [
        Row(
            f"/v1/track p50 / p95 / p99 @ {rps:.0f} req/s",
            f"{p50:.1f} / {p95:.1f} / {p99:.1f} ms",
            f"{pct(svc, 50):.1f} / {pct(svc, 95):.1f} / {pct(svc, 99):.1f} ms from send",
            "",
            f"p99 < {AIM_P99_MS:.0f} ms",
            p99 < AIM_P99_MS,
        ),
        Row(
            "/v1/track achieved rate",
            f"{achieved:,.0f} req/s answered 200",
            f"{rps:,.0f} req/s offered",
            f"{achieved / rps:.2f}×",
            "",
            None,
        ),
    ]


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000, help="file-ingest messages")
    parser.add_argument("--http-events", type=int, default=100_000, help="/v1/batch messages")
    parser.add_argument("--concurrency", type=int, default=32, help="batch requests in flight")
    parser.add_argument("--rps", type=float, default=500.0, help="/v1/track open-loop rate")
    parser.add_argument("--seconds", type=float, default=10.0, help="/v1/track duration")
    parser.add_argument("--quick", action="store_true", help="~10× smaller, under a minute")
    parser.add_argument(
        "--only", choices=("file", "batch", "track"), action="append", help="run only these"
    )
    args = parser.parse_args()
    if args.quick:
        args.events //= 10
        args.http_events //= 10
        args.seconds = min(args.seconds, 2.0)

    console.print(
        f"cohortsync ingest bench — {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"duckdb {duckdb.__version__}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cohortsync-bench-") as tmp:
        workdir = Path(tmp)
        wanted = set(args.only or ("file", "batch", "track"))
        if "file" in wanted:
            rows += bench_file(args.events, workdir)
        if "batch" in wanted:
            rows += bench_http_batch(args.http_events, args.concurrency, workdir)
        if "track" in wanted:
            rows += bench_track(args.rps, args.seconds, workdir)

    table = Table(title="cohortsync ingest")
    for column in ("measure", "cohortsync", "baseline", "ratio", "aim", "met"):
        table.add_column(column)
    for row in rows:
        met = "" if row.met is None else ("[green]yes[/]" if row.met else "[red]no[/]")
        table.add_row(row.measure, row.ours, row.baseline, row.ratio, row.aim, met)
    console.print(table)


if __name__ == "__main__":
    main()
