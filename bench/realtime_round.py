"""Real-time round benchmark: what one round of the real-time loop costs, store by store.

Run:  .venv/bin/python bench/realtime_round.py [--profiles 5000] [--rounds 300]
      [--postgres postgresql://postgres@127.0.0.1:5432/test] [--baseline REV]

A fresh project per store: bench/realtime.py's, three real-time audiences (cart abandon, browse
abandon, purchase suppression) routed to a webhook (its outbox rows are planned; nothing is
delivered). The store holds `--profiles` known profiles with a few old
events each. Then, `--rounds` times: `--per-round` events (cart adds, product views or
purchases, in turn) for distinct random profiles are committed through the engine, and the
loop's round that evaluates them
(`ServeWorkers.loop.step()`, no thread) is timed alone. Ingest and delivery are not timed.

With `--baseline REV`, the same measurement runs first on that commit (checked out in a
temporary worktree, run in a child process) so both are side by side on one machine state.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from realtime import project_yaml  # the project of bench/realtime.py

ROOT = Path(__file__).resolve().parent.parent
console = Console(width=120)

SECRET = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="
HOOK = "http://127.0.0.1:9/hook"
"""Nothing listens there: the rounds plan the webhook's outbox rows; nothing is delivered."""
EVENTS = ("Added To Cart", "Product Viewed", "Order Completed")


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def history(profiles: int, now: datetime) -> list[dict[str, Any]]:
    """An identify and three old events per profile, outside every window."""
    rng = random.Random(7)
    out: list[dict[str, Any]] = []
    for i in range(profiles):
        user = f"u{i:06d}"
        old = now - timedelta(days=rng.randint(10, 120))
        out.append(
            {
                "type": "identify",
                "messageId": f"h-{i}-0",
                "userId": user,
                "timestamp": stamp(old),
                "traits": {"email": f"person{i}@example.com"},
            }
        )
        for k, event in enumerate(EVENTS, start=1):
            out.append(
                {
                    "type": "track",
                    "messageId": f"h-{i}-{k}",
                    "userId": user,
                    "event": event,
                    "timestamp": stamp(old + timedelta(minutes=k)),
                }
            )
    return out


@contextmanager
def pg_schema(url: str) -> Any:
    """A store location in a fresh Postgres schema, dropped after."""
    import psycopg

    schema = f"round_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
    try:
        yield f"{url}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[arg-type]


def measure(store: str, profiles: int, rounds: int, per_round: int = 1) -> dict[str, Any]:
    """Round times (ms) of one store, in this process (whichever cohortsync it imports)."""
    from cohortsync.engine import Engine

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "cohortsync.yml").write_text(project_yaml(HOOK, SECRET, store), encoding="utf-8")
        now = datetime.now(UTC)
        with Engine.open(folder) as engine:
            engine.ingest_messages(history(profiles, now))
            workers = engine.serve_workers(lambda: datetime.now(UTC))
            try:
                loop = workers.loop
                loop.catch_up()
                loop.step()
                rng = random.Random(11)
                took: dict[str, list[float]] = {e: [] for e in EVENTS}
                for r in range(rounds):
                    event = EVENTS[r % len(EVENTS)]
                    users = rng.sample(range(profiles), per_round)
                    engine.ingest_messages(
                        [
                            {
                                "type": "track",
                                "messageId": f"r-{r}-{u}",
                                "userId": f"u{u:06d}",
                                "event": event,
                                "timestamp": stamp(datetime.now(UTC)),
                            }
                            for u in users
                        ]
                    )
                    start = time.perf_counter()
                    report = loop.step()
                    took[event].append((time.perf_counter() - start) * 1000)
                    if report.event_profiles != per_round:
                        raise SystemExit(f"round {r} evaluated {report.event_profiles} profiles")
            finally:
                workers.delivery.close()
    every = [t for ts in took.values() for t in ts]
    return {
        "p50": statistics.median(every),
        "p95": statistics.quantiles(every, n=20)[-1],
        "mean": statistics.fmean(every),
        "by_event": {e: statistics.median(ts) for e, ts in took.items()},
    }


@contextmanager
def worktree(rev: str) -> Any:
    """The source tree of `rev` in a temporary git worktree."""
    path = Path(tempfile.mkdtemp(prefix="round-baseline-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(path), rev], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False
        )


def run_child(src: Path, store: str, profiles: int, rounds: int, per_round: int) -> dict[str, Any]:
    """`measure` in a child process importing cohortsync from `src`."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            store,
            "--profiles",
            str(profiles),
            "--rounds",
            str(rounds),
            "--per-round",
            str(per_round),
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--per-round", type=int, default=1, help="events (profiles) per round")
    parser.add_argument("--postgres", help="also measure a Postgres store on this server URL")
    parser.add_argument("--baseline", help="measure this commit too, side by side")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.profiles, args.rounds, args.per_round)))
        return
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    kinds = ["duckdb", *(["postgres"] if args.postgres else [])]
    results: list[tuple[str, str, dict[str, Any]]] = []
    with ExitStack() as stack:
        base = stack.enter_context(worktree(args.baseline)) if args.baseline else None
        for kind in kinds:
            runs = [(args.baseline, base / "src")] if base is not None else []
            for rev, src in [*runs, (head, ROOT / "src")]:
                console.print(f"[dim]{kind}: {rev}…[/]")
                with ExitStack() as fresh:
                    location = (
                        fresh.enter_context(pg_schema(args.postgres))
                        if kind == "postgres"
                        else ".cohortsync/store.duckdb"
                    )
                    results.append(
                        (
                            kind,
                            rev,
                            run_child(src, location, args.profiles, args.rounds, args.per_round),
                        )
                    )
    table = Table(
        title=f"one real-time round of {args.per_round} events, {args.profiles:,} profiles, "
        f"{args.rounds} rounds "
        f"(load {os.getloadavg()[0]:.1f})"
    )
    for column in ("store", "commit", "p50 ms", "p95 ms", "mean ms", *EVENTS):
        table.add_column(column, justify="right" if column not in ("store", "commit") else "left")
    for kind, rev, r in results:
        table.add_row(
            kind,
            rev,
            f"{r['p50']:.1f}",
            f"{r['p95']:.1f}",
            f"{r['mean']:.1f}",
            *(f"{r['by_event'][e]:.1f}" for e in EVENTS),
        )
    console.print(table)


if __name__ == "__main__":
    main()
