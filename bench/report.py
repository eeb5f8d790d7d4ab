"""Report benchmark: `cohortsync report` on the ~1M and ~10M-event stores vs hand-written SQL.

Run:  .venv/bin/python bench/report.py [--events N ...] [--repeat R] [--quick]

The stores are those of bench/segments.py (cached under bench/out/segments-<N>-by-time/: the
example project's demo shop, 1M events ingested through the engine, 10M = that x 10 in SQL).
Each is copied once to bench/out/report-<N>/ and given a membership history: the whole project
computed and recorded once a week for nine weeks up to the store's NOW, as a weekly `compute`
would, so entries spread over two months and each has a 7-day conversion window of real orders.

Then, best of --repeat runs taken in turn:
- ours: `Engine.report(since, until)` — every audience with a holdout, all its figures;
- hand SQL: the lift counts per audience (first entry per profile in the period, its arm, an
  order within 7 days) in one query per audience, written independently (arg_min, EXISTS), as
  an analyst would. It computes only the arms' counts, so the ratio is ours / the counts alone.
The arms' counts of both must be equal (asserted).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

import duckdb
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from cohortsync.engine import Engine
from segments import NOW, OUT, best_of_each, ensure_store, peak_rss_mb

WEEKS = 9
SINCE, UNTIL = NOW - timedelta(weeks=WEEKS), NOW
console = Console(width=150)

HAND = """
WITH entries AS (
  SELECT profile_id, min(entered_at) AS entered_at, arg_min(holdout, entered_at) AS holdout
  FROM memberships
  WHERE kind = 'audience' AND name = $name AND entered_at BETWEEN $since AND $until
    AND profile_id NOT IN (SELECT profile_id FROM test_profiles)
  GROUP BY profile_id
)
SELECT holdout, count(*) AS profiles,
       count(*) FILTER (WHERE EXISTS (
         SELECT 1 FROM profile_events e
         WHERE e.canonical_profile_id = n.profile_id AND e.type = 'track'
           AND e.event = $event AND e.timestamp >= n.entered_at
           AND e.timestamp < n.entered_at + INTERVAL 7 DAY)) AS converted
FROM entries n GROUP BY holdout
"""


def ensure_history(events: int, base: int) -> Path:
    """A copy of the segments store with nine weekly recorded computes (cached)."""
    source = ensure_store(events, base)
    directory = OUT / f"report-{events}"
    done = directory / ".history-done"
    if done.exists():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(source, directory)
    started = time.perf_counter()
    with Engine.open(directory) as engine, Progress(console=console) as bar:
        task = bar.add_task(f"weekly computes on {directory.name}", total=WEEKS + 1)
        for week in range(WEEKS, -1, -1):
            engine.compute(NOW - timedelta(weeks=week))
            bar.advance(task)
    done.write_text("ok\n")
    console.print(f"  history recorded in {time.perf_counter() - started:.0f} s")
    return directory


def hand_counts(con: duckdb.DuckDBPyConnection, names: list[str], event: str) -> dict:
    """{audience: {holdout: (profiles, converted)}} by the hand-written query."""
    found = {}
    for name in names:
        rows = con.execute(
            HAND, {"name": name, "since": SINCE, "until": UNTIL, "event": event}
        ).fetchall()
        found[name] = {bool(h): (int(p), int(c)) for h, p, c in rows}
    return found


def run_size(events: int, base: int, repeat: int) -> Table:
    directory = ensure_history(events, base)
    with Engine.open(directory) as engine:
        first = engine.report(SINCE, UNTIL)
        names = [a.audience for a in first.audiences]
        con = engine.store._con  # type: ignore[attr-defined]
        (ours_ms, ours), (hand_ms, hand) = best_of_each(
            repeat,
            [
                lambda: engine.report(SINCE, UNTIL),
                lambda: hand_counts(con.cursor(), names, first.conversion_event),
            ],
        )
    for one in ours.audiences:
        mine = {
            False: (one.treatment.profiles, one.treatment.converted),
            True: (one.holdout.profiles, one.holdout.converted),
        }
        theirs = hand[one.audience]
        assert {k: v for k, v in mine.items() if v[0]} == theirs, (one.audience, mine, theirs)
    entrants = sum(a.treatment.profiles + a.holdout.profiles for a in ours.audiences)
    table = Table(
        title=f"report on ~{events:,} events: {len(names)} audiences, {entrants:,} entrants"
    )
    for column in ("", "seconds", "ratio"):
        table.add_column(column, justify="right" if column else "left")
    ratio = f"{ours_ms / hand_ms:.2f}x"
    table.add_row("ours: Engine.report (all figures)", f"{ours_ms / 1000:.3f}", ratio)
    table.add_row("hand SQL: the arms' counts only", f"{hand_ms / 1000:.3f}", "1.00x")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--base", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one 100k-event store, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat, args.base = [100_000], 1, 100_000
    OUT.mkdir(parents=True, exist_ok=True)
    console.print(
        f"report bench: Python {sys.version.split()[0]}, duckdb {duckdb.__version__}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"best of {args.repeat}"
    )
    for events in args.events:
        console.print(run_size(events, args.base, args.repeat))
    console.print(f"peak RSS {peak_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
