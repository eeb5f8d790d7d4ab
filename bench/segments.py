"""Segments benchmark: the example project's audiences, ours vs hand-written SQL vs pandas.

Run:  .venv/bin/python bench/segments.py [--events N ...] [--repeat R] [--quick]
          [--breakdown no|yes|only] [--memory-limit 4GB]

For each size, a store is built once and cached under bench/out/segments-<N>-by-time/ (a
project made by `scaffold_project`, i.e. the very template `cohortsync init` writes):
- up to --base events (default 1M): `generate_shop` at a fixed NOW, ingested through
  `Engine.ingest_messages` in timestamp order, as a live store receives them (the generator
  yields profile after profile); about 25k events/s, so 1M takes ~40 s;
- above that: the base store's file is copied and its events multiplied in SQL, copy k of every
  row getting `~k` appended to message_id, profile_id, user_id and anonymous_id (and the same
  suffix on profiles, aliases, identities and identify traits), so each copy is a distinct set
  of profiles with the same shape of history. 10M = the 1M base x 10.

Then, on the same store, every audience of the example project is computed as of NOW three
ways, each the best of --repeat runs (taken in turn, round after
round, so that load from other processes falls on all three alike):
- ours: `with_summaries(DuckDBCompiler(), store, ...)` (asks the store which of its per-profile
  event and property summaries are exact as of NOW, summarising the project's properties the
  first time), then `compile_audience` (the audience's segment minus each excluded segment,
  one query), rendered and run; the coverage check and compile time included;
- hand SQL: one query per audience written by hand against `profile_events` / `profiles`
  (below, `HAND_SQL`), the way an analyst would write it: one scan, FILTER aggregates;
- pandas, in a process of its own (so its DataFrame is not counted in this process's memory):
  the events (track events only) read into a DataFrame first, with the properties the
  audiences use already extracted into typed columns (favourable to pandas: it never parses
  JSON); only the computation is timed, there.
The three member sets must be equal (asserted). Then the whole project is computed the way
`cohortsync compute` does it (`compute_members`: segments, audience rules and holdouts in one
query), against the sum of the hand-written queries. Peak memory is each process's max RSS.
With --breakdown, one recorded compute run is timed step by step on a copy of the store.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import numpy as np
import orjson
import pandas as pd
from rich.console import Console
from rich.table import Table

from cohortsync.audiences.compute import (
    AUDIENCE,
    MEMBERSHIPS,
    Computed,
    _report,
    compute_members,
    members_query,
)
from cohortsync.config.loader import LoadedProject, load_project, parse_segments
from cohortsync.config.scaffold import scaffold_project
from cohortsync.demo.shop import generate_shop
from cohortsync.segments.ast import SegmentProject
from cohortsync.segments.compile import DuckDBCompiler, with_summaries
from cohortsync.segments.evaluate import EventRecord, ProfileHistory, evaluate, next_change
from cohortsync.store.duckdb_store import DuckDBStore
from cohortsync.sync.configure import sync_setup
from cohortsync.sync.memberships import record_compute

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)  # fixed, so stores are reproducible and cacheable
AT_US = int(NOW.timestamp()) * 1_000_000
EVENTS_PER_PROFILE = 31.8  # what generate_shop yields on average (measured at 5k profiles)
OUT = Path(__file__).parent / "out"
# DuckDB's memory while building a multiplied store (the sort by time spills to disk beyond
# it); left to DuckDB's default (80 % of RAM), building the 50M store peaked at 20 GB.
BUILD_MEMORY = "6GB"
console = Console(width=150)


# -- building the stores -------------------------------------------------------------------


def _store_file(directory: Path) -> Path:
    return directory / ".cohortsync" / "store.duckdb"


def build_base(directory: Path, events: int) -> None:
    """Generate and ingest ~`events` demo-shop events through the engine."""
    from cohortsync.engine import Engine

    profiles = max(100, round(events / EVENTS_PER_PROFILE))
    scaffold_project(directory, force=True)
    started = time.perf_counter()
    with Engine.open(directory) as engine:
        shop = sorted(generate_shop(profiles, seed=7, now=NOW), key=itemgetter("timestamp"))
        result = engine.ingest_messages(shop, source="demo")
    console.print(
        f"  built {directory.name}: {profiles:,} profiles, {result.received:,} messages "
        f"ingested in {time.perf_counter() - started:.0f} s"
    )


def build_multiplied(base: Path, directory: Path, factor: int) -> None:
    """Copy the base store and multiply its events `factor` times as distinct profiles."""
    started = time.perf_counter()
    scaffold_project(directory, force=True)
    _store_file(directory).parent.mkdir(parents=True, exist_ok=True)
    partial = _store_file(directory).with_suffix(".partial")
    shutil.copyfile(_store_file(base), partial)
    con = duckdb.connect(str(partial), config={"memory_limit": BUILD_MEMORY})
    s = "|| '~' || k"  # the suffix of copy k
    copies = f"range(1, {factor}) AS r(k)"
    con.execute(
        f"INSERT INTO events SELECT e.* REPLACE (message_id {s} AS message_id, "
        f"profile_id {s} AS profile_id, user_id {s} AS user_id, "
        f"anonymous_id {s} AS anonymous_id, previous_id {s} AS previous_id) "
        f"FROM events e, {copies} ORDER BY e.timestamp"
    )
    con.execute(
        f"INSERT INTO profiles SELECT profile_id {s}, created_at, merged_into {s} "
        f"FROM profiles, {copies}"
    )
    con.execute(
        f"INSERT INTO profile_aliases SELECT profile_id {s}, canonical_id {s} "
        f"FROM profile_aliases, {copies}"
    )
    con.execute(
        f"INSERT INTO identities SELECT kind, value {s}, profile_id {s}, first_seen "
        f"FROM identities, {copies}"
    )
    con.execute(
        f"INSERT INTO profile_traits SELECT profile_id {s}, name, value, updated_at "
        f"FROM profile_traits, {copies}"
    )
    con.execute("CHECKPOINT")
    con.close()
    store = DuckDBStore(partial, memory_limit=BUILD_MEMORY)  # written in SQL: summarise again
    store.migrate()
    store.rebuild_summaries()
    store.close()
    partial.rename(_store_file(directory))  # only a finished store is ever reused
    console.print(
        f"  built {directory.name}: base x {factor} in SQL in {time.perf_counter() - started:.0f} s"
    )


def ensure_store(events: int, base_events: int) -> Path:
    """The cached project directory holding ~`events` events."""
    directory = OUT / f"segments-{events}-by-time"
    if _store_file(directory).exists():
        return directory
    if events <= base_events:
        build_base(directory, events)
        return directory
    factor = max(2, round(events / base_events))
    base = ensure_store(base_events, base_events)
    build_multiplied(base, directory, factor)
    return directory


# -- hand-written SQL -------------------------------------------------------------------------

AT = f"TIMESTAMPTZ '{NOW:%Y-%m-%d %H:%M:%S}+00'"
LIVE = "SELECT profile_id FROM profiles WHERE merged_into IS NULL"
REVENUE = "TRY_CAST(json_extract_string(properties, '$.revenue') AS DOUBLE)"
NUMERIC_REVENUE = "json_type(properties, '$.revenue') IN ('BIGINT', 'UBIGINT', 'DOUBLE', 'HUGEINT')"
ACTIVE_SUBSCRIBER = f"""
    SELECT canonical_profile_id AS pid FROM profile_events
    WHERE event_key IN ('subscription_started', 'subscription_cancelled') AND timestamp <= {AT}
    GROUP BY 1
    HAVING max(timestamp) FILTER (event_key = 'subscription_started') IS NOT NULL
       AND coalesce(max(timestamp) FILTER (event_key = 'subscription_cancelled')
                    <= max(timestamp) FILTER (event_key = 'subscription_started'), true)
"""
LAPSED = f"""
    SELECT canonical_profile_id AS pid FROM profile_events
    WHERE event_key IN ('order_completed', 'product_viewed', 'added_to_cart', 'email_opened',
                        'email_clicked')
      AND timestamp >= {AT} - INTERVAL 90 DAY AND timestamp <= {AT}
    GROUP BY 1
    HAVING count(*) FILTER (event_key = 'order_completed'
                            AND timestamp <= {AT} - INTERVAL 60 DAY) > 0
       AND count(*) FILTER (event_key = 'order_completed'
                            AND timestamp > {AT} - INTERVAL 60 DAY) = 0
       AND count(*) FILTER (event_key <> 'order_completed'
                            AND timestamp > {AT} - INTERVAL 14 DAY) > 0
"""
# Buyers of the last 7 days: excluded from the cart and browse abandon audiences.
RECENT_BUYERS = f"""
    SELECT canonical_profile_id FROM profile_events
    WHERE event_key = 'order_completed'
      AND timestamp > {AT} - INTERVAL 7 DAY AND timestamp <= {AT}
"""
# Per-profile order aggregates (computed traits ltv, aov, usually_discounted) as of AT.
ORDERS = f"""
    SELECT canonical_profile_id AS pid,
           sum({REVENUE}) FILTER ({NUMERIC_REVENUE}) AS ltv,
           avg({REVENUE}) FILTER ({NUMERIC_REVENUE}) AS aov,
           count(*) FILTER (json_extract_string(properties, '$.discount') = 'true')
             > count(*) FILTER (json_extract_string(properties, '$.discount') = 'false')
             AS usually_discounted
    FROM profile_events WHERE event_key = 'order_completed' AND timestamp <= {AT}
    GROUP BY 1
"""
# The cart abandoners (segment cart_abandon_6h).
CART_ABANDON = f"""
    SELECT c.pid FROM (
        SELECT canonical_profile_id AS pid, max(timestamp) AS last_add
        FROM profile_events
        WHERE event_key = 'added_to_cart' AND timestamp <= {AT}
        GROUP BY 1
        HAVING count(*) FILTER (timestamp BETWEEN {AT} - INTERVAL 6 HOUR
                                              AND {AT} - INTERVAL 2 HOUR) > 0
    ) c
    WHERE c.pid IN ({LIVE}) AND NOT EXISTS (
        SELECT 1 FROM profile_events o
        WHERE o.event_key = 'order_completed' AND o.canonical_profile_id = c.pid
          AND o.timestamp > c.last_add AND o.timestamp <= {AT})
"""
HAND_SQL: dict[str, str] = {
    "cio_cart_abandon_6h": f"({CART_ABANDON}) EXCEPT ({RECENT_BUYERS})",
    "cio_browse_abandon_24h": f"""
        SELECT canonical_profile_id FROM profile_events
        WHERE event_key IN ('product_viewed', 'added_to_cart', 'order_completed')
          AND timestamp >= {AT} - INTERVAL 7 DAY AND timestamp <= {AT}
        GROUP BY 1
        HAVING count(*) FILTER (event_key = 'product_viewed'
                                AND timestamp >= {AT} - INTERVAL 24 HOUR
                                AND timestamp <= {AT} - INTERVAL 1 HOUR) > 0
           AND count(*) FILTER (event_key = 'added_to_cart'
                                AND timestamp > {AT} - INTERVAL 24 HOUR) = 0
           AND count(*) FILTER (event_key = 'order_completed'
                                AND timestamp > {AT} - INTERVAL 7 DAY) = 0
        INTERSECT {LIVE}
    """,
    "cio_lapsed_75d": f"({LAPSED} INTERSECT {LIVE}) EXCEPT ({ACTIVE_SUBSCRIBER})",
    "cio_lapsed_high_aov": f"""
        SELECT o.pid FROM ({ORDERS}) o
        WHERE o.aov >= 50 AND NOT o.usually_discounted
          AND o.pid IN ({LAPSED}) AND o.pid IN ({LIVE}) AND o.pid NOT IN ({ACTIVE_SUBSCRIBER})
    """,
    "cio_lapsed_price_sensitive": f"""
        SELECT o.pid FROM ({ORDERS}) o
        WHERE o.usually_discounted
          AND o.pid IN ({LAPSED}) AND o.pid IN ({LIVE}) AND o.pid NOT IN ({ACTIVE_SUBSCRIBER})
    """,
    "cio_replenish_30d": f"""
        SELECT canonical_profile_id FROM profile_events
        WHERE event_key IN ('added_to_cart', 'order_completed')
          AND timestamp >= {AT} - INTERVAL 35 DAY AND timestamp <= {AT}
        GROUP BY 1
        HAVING count(*) FILTER (event_key = 'added_to_cart'
                   AND timestamp <= {AT} - INTERVAL 21 DAY
                   AND json_extract_string(properties, '$.sku')
                       IN ('COF-ESP-250', 'COF-DEC-250', 'VIT-D3-60', 'VIT-MULTI-30')) > 0
           AND count(*) FILTER (event_key = 'order_completed'
                   AND timestamp <= {AT} - INTERVAL 21 DAY) > 0
           AND count(*) FILTER (event_key = 'order_completed'
                   AND timestamp > {AT} - INTERVAL 21 DAY) = 0
        INTERSECT {LIVE}
        EXCEPT ({ACTIVE_SUBSCRIBER})
    """,
    "cio_recent_purch_7d_suppress": f"""
        SELECT DISTINCT canonical_profile_id FROM profile_events
        WHERE event_key = 'order_completed'
          AND timestamp > {AT} - INTERVAL 7 DAY AND timestamp <= {AT}
        INTERSECT {LIVE}
    """,
    "cio_active_subscribers_suppress": f"{ACTIVE_SUBSCRIBER} INTERSECT {LIVE}",
    "cio_ltv_high": f"SELECT pid FROM ({ORDERS}) WHERE ltv >= 150 INTERSECT {LIVE}",
    "cio_ltv_mid": f"SELECT pid FROM ({ORDERS}) WHERE ltv >= 50 AND ltv < 150 INTERSECT {LIVE}",
    "cio_ltv_low": f"SELECT pid FROM ({ORDERS}) WHERE ltv > 0 AND ltv < 50 INTERSECT {LIVE}",
    "cio_nonconverter_msg1": f"""
        SELECT d.pid FROM (
            SELECT canonical_profile_id AS pid, max(timestamp) AS last_m1
            FROM profile_events
            WHERE event_key = 'email_delivered' AND timestamp <= {AT}
              AND json_extract_string(properties, '$.campaign_id')
                  IN ('cmp_welcome_1', 'cmp_cart_recovery_1')
            GROUP BY 1
            HAVING max(timestamp) BETWEEN {AT} - INTERVAL 7 DAY AND {AT} - INTERVAL 24 HOUR
        ) d
        WHERE d.pid IN ({LIVE}) AND NOT EXISTS (
            SELECT 1 FROM profile_events o
            WHERE o.event_key = 'order_completed' AND o.canonical_profile_id = d.pid
              AND o.timestamp > d.last_m1 AND o.timestamp <= d.last_m1 + INTERVAL 24 HOUR)
          AND d.pid NOT IN ({RECENT_BUYERS}) AND d.pid NOT IN ({CART_ABANDON})
    """,
}


# -- pandas -----------------------------------------------------------------------------------

DF_SQL = """
    SELECT canonical_profile_id AS pid, event_key AS ev,
           epoch_us(timestamp) AS ts,
           json_extract_string(properties, '$.sku') AS sku,
           json_extract_string(properties, '$.campaign_id') AS campaign_id,
           CASE WHEN json_type(properties, '$.revenue') IN ('BIGINT', 'UBIGINT', 'DOUBLE',
                'HUGEINT') THEN CAST(json_extract_string(properties, '$.revenue') AS DOUBLE)
                END AS revenue,
           CASE json_type(properties, '$.discount') WHEN 'BOOLEAN'
                THEN json_extract_string(properties, '$.discount') = 'true' END AS discount
    FROM profile_events WHERE type = 'track'
"""
H = 3_600_000_000
D = 24 * H


class PandasAudiences:
    """The same audiences over a DataFrame of track events (typed columns, no JSON)."""

    def __init__(self, df: pd.DataFrame, live: np.ndarray, at: int) -> None:
        self.df, self.live, self.at = df, live, at

    def _ids(self, mask: pd.Series) -> np.ndarray:
        return np.intersect1d(self.df.loc[mask, "pid"].unique(), self.live)

    def _ev(self, name: str, lo: int | None = None, hi: int | None = None) -> pd.Series:
        """Events `name` with lo <= ts <= hi (hi defaults to at)."""
        df = self.df
        mask = (df["ev"] == name) & (df["ts"] <= (self.at if hi is None else hi))
        return mask & (df["ts"] >= lo) if lo is not None else mask

    def active_subscriber(self) -> np.ndarray:
        df = self.df
        subs = df[(df["ev"] == "subscription_started") & (df["ts"] <= self.at)]
        cancels = df[(df["ev"] == "subscription_cancelled") & (df["ts"] <= self.at)]
        start = subs.groupby("pid", observed=True)["ts"].max()
        cancel = cancels.groupby("pid", observed=True)["ts"].max().reindex(start.index)
        active = start.index[~(cancel > start)]
        return np.intersect1d(np.asarray(active), self.live)

    def lapsed(self) -> np.ndarray:
        at = self.at
        old = self._ids(self._ev("order_completed", at - 90 * D, at - 60 * D))
        recent = self._ids(self._ev("order_completed", at - 60 * D + 1))
        engaged_mask = (
            self.df["ev"].isin(["product_viewed", "added_to_cart", "email_opened", "email_clicked"])
            & (self.df["ts"] > at - 14 * D)
            & (self.df["ts"] <= at)
        )
        engaged = self._ids(engaged_mask)
        return np.intersect1d(np.setdiff1d(old, recent), engaged)

    def orders(self) -> pd.DataFrame:
        o = self.df[self._ev("order_completed")]
        g = o.groupby("pid", observed=True)
        out = pd.DataFrame({"ltv": g["revenue"].sum(min_count=1), "aov": g["revenue"].mean()})
        disc = o["discount"]
        trues = (disc == True).groupby(o["pid"], observed=True).sum()  # noqa: E712
        falses = (disc == False).groupby(o["pid"], observed=True).sum()  # noqa: E712
        out["usually_discounted"] = trues > falses
        return out

    def run(self, name: str) -> np.ndarray:
        at, df = self.at, self.df
        if name == "cio_cart_abandon_6h":
            carts = df[self._ev("added_to_cart")]
            g = carts.groupby("pid", observed=True)["ts"]
            last_add = g.max()
            in_window = carts[(carts["ts"] >= at - 6 * H) & (carts["ts"] <= at - 2 * H)]
            cand = last_add[last_add.index.isin(in_window["pid"].unique())]
            orders = df[self._ev("order_completed")]
            last_order = orders.groupby("pid", observed=True)["ts"].max().reindex(cand.index)
            keep = cand.index[~(last_order > cand)]
            recent = self._ids(self._ev("order_completed", at - 7 * D + 1))
            return np.setdiff1d(np.intersect1d(np.asarray(keep), self.live), recent)
        if name == "cio_browse_abandon_24h":
            viewed = self._ids(self._ev("product_viewed", at - 24 * H, at - H))
            carted = self._ids(self._ev("added_to_cart", at - 24 * H + 1))
            ordered = self._ids(self._ev("order_completed", at - 7 * D + 1))  # 24h, and 7d excluded
            return np.setdiff1d(viewed, np.union1d(carted, ordered))
        if name == "cio_lapsed_75d":
            return np.setdiff1d(self.lapsed(), self.active_subscriber())
        if name in ("cio_lapsed_high_aov", "cio_lapsed_price_sensitive"):
            o = self.orders()
            if name == "cio_lapsed_high_aov":
                chosen = o.index[(o["aov"] >= 50) & ~o["usually_discounted"]]
            else:
                chosen = o.index[o["usually_discounted"]]
            lapsed = np.intersect1d(self.lapsed(), np.asarray(chosen))
            return np.setdiff1d(lapsed, self.active_subscriber())
        if name == "cio_replenish_30d":
            skus = ["COF-ESP-250", "COF-DEC-250", "VIT-D3-60", "VIT-MULTI-30"]
            carted = self._ids(
                self._ev("added_to_cart", at - 35 * D, at - 21 * D) & df["sku"].isin(skus)
            )
            bought = self._ids(self._ev("order_completed", at - 35 * D, at - 21 * D))
            rebought = self._ids(self._ev("order_completed", at - 21 * D + 1))
            due = np.setdiff1d(np.intersect1d(carted, bought), rebought)
            return np.setdiff1d(due, self.active_subscriber())
        if name == "cio_recent_purch_7d_suppress":
            return self._ids(self._ev("order_completed", at - 7 * D + 1))
        if name == "cio_active_subscribers_suppress":
            return self.active_subscriber()
        if name in ("cio_ltv_high", "cio_ltv_mid", "cio_ltv_low"):
            ltv = self.orders()["ltv"]
            if name == "cio_ltv_high":
                chosen = ltv.index[ltv >= 150]
            elif name == "cio_ltv_mid":
                chosen = ltv.index[(ltv >= 50) & (ltv < 150)]
            else:
                chosen = ltv.index[(ltv > 0) & (ltv < 50)]
            return np.intersect1d(np.asarray(chosen), self.live)
        if name == "cio_nonconverter_msg1":
            message_1 = df["campaign_id"].isin(["cmp_welcome_1", "cmp_cart_recovery_1"])
            deliveries = df[self._ev("email_delivered") & message_1]
            latest = deliveries.groupby("pid", observed=True)["ts"].max()
            waited = latest[(latest >= at - 7 * D) & (latest <= at - 24 * H)]
            orders = df.loc[self._ev("order_completed"), ["pid", "ts"]]
            after = orders.merge(waited.rename("anchor").reset_index(), on="pid")
            within = (after["ts"] > after["anchor"]) & (after["ts"] <= after["anchor"] + 24 * H)
            converted = after.loc[within, "pid"].unique()
            recent = self._ids(self._ev("order_completed", at - 7 * D + 1))
            quiet = np.setdiff1d(np.asarray(waited.index), converted)
            # Cart abandoners are excluded too (those of the audience: recent buyers are anyway).
            excluded = np.union1d(recent, self.run("cio_cart_abandon_6h"))
            return np.setdiff1d(np.intersect1d(quiet, self.live), excluded)
        raise KeyError(name)


# -- the pandas side, in a process of its own -----------------------------------------------


class Timed(NamedTuple):
    """A result with the time its computation took where it ran (not counting the pipe)."""

    ms: float
    value: Any


def _pandas_worker(store_file: str, conn: Connection) -> None:
    """Load the DataFrame, then answer ("run", audience) with the members' profile ids until
    ("stop",), which answers with this process's peak RSS in MB. The store is opened read-only
    and closed before the first answer, so the parent can then open it for writing."""
    started = time.perf_counter()
    con = duckdb.connect(store_file, read_only=True)
    df = con.execute(DF_SQL).df()
    pids = df["pid"].astype("category")
    names = pids.cat.categories  # profile ids; the DataFrame holds their integer codes
    df["pid"] = pids.cat.codes.astype(np.int64)
    df["ev"] = df["ev"].astype("category")
    live_ids = [r[0] for r in con.execute(LIVE).fetchall()]
    con.close()
    codes = names.get_indexer(live_ids)
    live = np.sort(codes[codes >= 0])  # profiles without track events are in no audience
    side = PandasAudiences(df, live, AT_US)
    conn.send((time.perf_counter() - started, len(df)))
    while True:
        command = conn.recv()
        if command[0] == "stop":
            conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            return
        begun = time.perf_counter()
        found = side.run(command[1])
        ms = (time.perf_counter() - begun) * 1000
        conn.send(Timed(ms, [str(p) for p in names[found]]))


class PandasProcess:
    """The pandas baseline in a child process, so that its DataFrame (most of the memory at
    50M events) is not counted in the peak RSS of the process that runs ours."""

    def __init__(self, store_file: Path) -> None:
        self._conn, child = mp.get_context("spawn").Pipe()
        self._process = mp.get_context("spawn").Process(
            target=_pandas_worker, args=(str(store_file), child), daemon=True
        )
        self._process.start()
        self.load_s, self.rows = self._conn.recv()

    def run(self, name: str) -> Timed:
        self._conn.send(("run", name))
        timed: Timed = self._conn.recv()
        return timed

    def stop(self) -> float:
        """Stop the process; its peak RSS in MB."""
        self._conn.send(("stop",))
        peak: float = self._conn.recv()
        self._process.join()
        return peak


# -- running ------------------------------------------------------------------------------


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(best wall time in ms, result of the last run)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, (time.perf_counter() - started) * 1000)
    return best, result


def best_of_each(repeat: int, fns: list[Callable[[], Any]]) -> list[tuple[float, Any]]:
    """`best_of` for several functions run in turn, round after round, so that a burst of load
    from other processes falls on all of them alike. A function returning `Timed` is credited
    with the time it reports."""
    best = [float("inf")] * len(fns)
    results: list[Any] = [None] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            started = time.perf_counter()
            results[i] = fn()
            ms = (time.perf_counter() - started) * 1000
            if isinstance(results[i], Timed):
                ms, results[i] = results[i].ms, results[i].value
            best[i] = min(best[i], ms)
    return list(zip(best, results, strict=True))


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def open_store(directory: Path, memory_limit: str | None) -> DuckDBStore:
    """The bench store of `directory`, migrated (a store cached before event summaries gets
    them here)."""
    store = DuckDBStore(_store_file(directory), memory_limit=memory_limit)
    store.migrate()
    return store


def run_size(
    events: int, base_events: int, repeat: int, memory_limit: str | None, breakdown: str
) -> None:
    directory = ensure_store(events, base_events)
    loaded = load_project(directory)
    project = parse_segments(loaded)
    open_store(directory, memory_limit).close()  # migrated before the pandas side reads it
    if breakdown != "only":
        audiences_and_compute(directory, project, repeat, memory_limit)
    if breakdown != "no":
        console.print(compute_breakdown(directory, loaded, project, repeat, memory_limit))
    console.print(f"  peak RSS of this process so far: {peak_rss_mb():,.0f} MB")


def audiences_and_compute(
    directory: Path, project: SegmentProject, repeat: int, memory_limit: str | None
) -> None:
    """Every audience three ways (ours, hand SQL, pandas), then one compute run."""
    pandas_side = PandasProcess(_store_file(directory))
    store = open_store(directory, memory_limit)
    # The same database instance as the store's (one process may open a file once).
    con = duckdb.connect(str(_store_file(directory)))
    n_events = con.execute("SELECT count(*) FROM events").fetchone()[0]
    n_profiles = con.execute("SELECT count(*) FROM profiles WHERE merged_into IS NULL").fetchone()[
        0
    ]

    def compile_only(name: str) -> str:
        compiler = with_summaries(DuckDBCompiler(), store, project, AT_US)
        return compiler.render(compiler.compile_audience(name, project, AT_US))

    def ours(name: str) -> list[tuple[Any, ...]]:
        return con.execute(compile_only(name)).fetchall()

    table = Table(title=f"{n_events:,} events, {n_profiles:,} live profiles (as of {NOW:%F %H:%M})")
    columns = ("audience", "members", "ours ms", "(compile ms)", "hand SQL ms", "pandas ms",
               "ours/hand", "pandas/ours")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "audience" else "right")
    totals = [0.0, 0.0, 0.0]
    members: dict[str, set[str]] = {}
    for name in project.audiences:
        (t_ours, r_ours), (t_compile, _), (t_hand, r_hand), (t_pd, r_pd) = best_of_each(
            repeat,
            [
                lambda n=name: ours(n),
                lambda n=name: compile_only(n),
                lambda n=name: con.execute(HAND_SQL[n]).fetchall(),
                lambda n=name: pandas_side.run(n),
            ],
        )
        a, b, c = {r[0] for r in r_ours}, {r[0] for r in r_hand}, set(r_pd)
        assert a == b == c, (name, len(a), len(b), len(c))
        members[name] = a
        totals = [totals[0] + t_ours, totals[1] + t_hand, totals[2] + t_pd]
        table.add_row(
            name, f"{len(a):,}", f"{t_ours:.1f}", f"{t_compile:.1f}", f"{t_hand:.1f}",
            f"{t_pd:.1f}",
            f"{t_ours / t_hand:.2f}x", f"{t_pd / t_ours:.1f}x",
        )  # fmt: skip
    table.add_row(
        "[b]all audiences[/b]", "", f"{totals[0]:.0f}", "", f"{totals[1]:.0f}", f"{totals[2]:.0f}",
        f"{totals[0] / totals[1]:.2f}x", f"{totals[2] / totals[0]:.1f}x",
    )  # fmt: skip
    console.print(table)
    console.print(f"  peak RSS of this process after the audiences: {peak_rss_mb():,.0f} MB")
    pandas_peak = pandas_side.stop()
    console.print(
        f"  pandas (own process): DataFrame load, not timed above, {pandas_side.load_s:.1f} s, "
        f"{pandas_side.rows:,} rows; its peak RSS {pandas_peak:,.0f} MB"
    )
    t_run, computed = best_of(repeat, lambda: compute_members(store, project, AT_US))
    store.close()
    for name, expected in members.items():
        assert computed.ids(AUDIENCE, name) == expected, name
    console.print(
        f"  one compute run (compute_members: {len(project.segments)} segments and "
        f"{len(project.audiences)} audiences, as `cohortsync compute` does): [b]{t_run:.0f} ms[/b]"
        f" against {totals[1]:.0f} ms for the {len(members)} hand-written queries "
        f"({t_run / totals[1]:.2f}x) and {totals[2]:.0f} ms in pandas; peak RSS of this "
        f"process after it {peak_rss_mb():,.0f} MB"
    )
    console.print(evaluator_cost(con, project))
    con.close()


def compute_breakdown(
    directory: Path,
    loaded: LoadedProject,
    project: SegmentProject,
    repeat: int,
    memory_limit: str | None,
) -> Table:
    """Where one recorded compute run spends its time, step by step (best of `repeat`).

    Each repeat records into a fresh copy of the store: a first run as of NOW (every member
    enters) and a next run an hour later (a few enter and exit), with the project's routes, as
    `cohortsync compute` does."""
    routes = sync_setup(loaded, project).routes
    copy = directory / "breakdown.duckdb"
    best: dict[tuple[str, str], float] = {}
    sizes: dict[str, str] = {}

    def took(step: str, label: str, since: float) -> float:
        now = time.perf_counter()
        best[(step, label)] = min(best.get((step, label), float("inf")), (now - since) * 1000)
        return now

    for _ in range(repeat):
        shutil.copyfile(_store_file(directory), copy)
        store = DuckDBStore(copy, memory_limit=memory_limit)
        try:
            for label, at in (("first", AT_US), ("next", AT_US + H)):
                started = t = time.perf_counter()
                compiler = with_summaries(DuckDBCompiler(), store, project, at)
                sql = compiler.render(members_query(compiler, project, at))
                t = took("compile (coverage check, SQL of segments, audiences, holdout)", label, t)
                result = store.query_arrow(sql)
                t = took("query: flags, audience rules, holdout hash; Arrow out", label, t)
                table = result.select(MEMBERSHIPS.names).cast(MEMBERSHIPS)
                computed = Computed(at, table, tuple(project.segments), tuple(project.audiences))
                t = took("membership table (Arrow)", label, t)
                changes = record_compute(store.sql, table, at, started, routes)
                t = took("record_compute: diff + outbox plan (store)", label, t)
                report = _report(computed, changes, started)
                t = took("report (sizes, holdout counts)", label, t)
                best[("total", label)] = min(
                    best.get(("total", label), float("inf")), (t - started) * 1000
                )
                entered, exited = sum(changes.entered.values()), sum(changes.exited.values())
                sizes[label] = (
                    f"{table.num_rows:,} memberships, {entered:,} entered, {exited:,} exited, "
                    f"{sum(r.holdout for r in report.rows):,} held out"
                )
            t = time.perf_counter()
            plan = compiler.compile_members(project, list(project.segments), AT_US + H)
            store.query_arrow(compiler.render(plan.query))
            took("(for reference: the flags query alone)", "next", t)
        finally:
            store.close()
            copy.unlink()
            copy.with_suffix(".duckdb.wal").unlink(missing_ok=True)
    table = Table(
        title=f"One recorded compute run, step by step (best of {repeat}): first run "
        f"({sizes['first']}); next run an hour later ({sizes['next']})"
    )
    for col in ("step", "first run ms", "next run ms"):
        table.add_column(col, justify="left" if col == "step" else "right")
    steps = dict.fromkeys(step for step, _ in best)
    for step in steps:
        first, next_ = best.get((step, "first")), best.get((step, "next"))
        table.add_row(
            f"[b]{step}[/b]" if step == "total" else step,
            "" if first is None else f"{first:.1f}",
            "" if next_ is None else f"{next_:.1f}",
        )
    return table


def histories(con: duckdb.DuckDBPyConnection, sample: int) -> list[ProfileHistory]:
    """The first `sample` live profiles (by id) as the real-time path sees them."""
    rows = con.execute(
        "WITH s AS (SELECT profile_id FROM profiles WHERE merged_into IS NULL "
        "ORDER BY profile_id LIMIT ?) "
        'SELECT e.canonical_profile_id, e.message_id, e.event_key, epoch_us(e."timestamp"), '
        "e.properties FROM profile_events e JOIN s ON s.profile_id = e.canonical_profile_id "
        "WHERE e.event_key IS NOT NULL",
        [sample],
    ).fetchall()
    events: dict[str, list[EventRecord]] = {}
    for pid, mid, key, ts, props in rows:
        events.setdefault(pid, []).append(
            EventRecord(mid, key, ts, orjson.loads(props) if props else {})
        )
    traits: dict[str, dict[str, Any]] = {pid: {} for pid in events}
    for pid, name, value in con.execute(
        "SELECT profile_id, name, value FROM profile_traits WHERE profile_id IN (SELECT unnest(?))",
        [list(events)],
    ).fetchall():
        traits[pid][name] = None if value is None else orjson.loads(value)
    return [ProfileHistory(pid, tuple(evs), traits[pid]) for pid, evs in events.items()]


def evaluator_cost(con: duckdb.DuckDBPyConnection, project: Any, sample: int = 2_000) -> Table:
    """Microseconds per profile of the Python evaluator and of `next_change`, per segment."""
    loaded = histories(con, sample)
    per_profile = sum(len(h.events) for h in loaded) / max(1, len(loaded))
    table = Table(
        title=f"Python evaluator over {len(loaded):,} profiles "
        f"({per_profile:.0f} events each on average), as of {NOW:%F %H:%M}"
    )
    for col in ("segment", "evaluate µs/profile", "next_change µs/profile"):
        table.add_column(col, justify="left" if col == "segment" else "right")
    for name, segment in project.segments.items():
        started = time.perf_counter()
        for history in loaded:
            evaluate(segment.condition, history, AT_US, project)
        evaluated = time.perf_counter() - started
        started = time.perf_counter()
        for history in loaded:
            next_change(segment.condition, history, AT_US, project)
        changed = time.perf_counter() - started
        n = max(1, len(loaded))
        table.add_row(name, f"{evaluated / n * 1e6:.1f}", f"{changed / n * 1e6:.1f}")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--base", type=int, default=1_000_000, help="largest engine-built store")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one 100k-event store, 1 repeat")
    parser.add_argument(
        "--breakdown",
        choices=["no", "yes", "only"],
        default="no",
        help="also (or only) time each step of a recorded compute run",
    )
    parser.add_argument(
        "--memory-limit", default=None, help="the store's DuckDB memory limit (default: its own)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat, args.base = [100_000], 1, 100_000
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cpu = platform.processor() or platform.machine()
    console.print(
        f"segments bench: Python {sys.version.split()[0]}, duckdb {duckdb.__version__}, "
        f"pandas {pd.__version__}, {os.cpu_count()} CPUs ({cpu}), best of {args.repeat}"
    )
    for events in args.events:
        run_size(events, args.base, args.repeat, args.memory_limit, args.breakdown)
    console.print(
        f"total wall time {time.perf_counter() - started:.1f} s, peak RSS of this process "
        f"{peak_rss_mb():,.0f} MB (the pandas side ran in its own process)"
    )


if __name__ == "__main__":
    main()
