"""Real-time benchmark: events/s through HTTP with real-time audiences, purchase → suppression.

Run:  .venv/bin/python bench/realtime.py [--rates 100 1000] [--search] [--seconds 20] [--quick]
      [--bus redis://127.0.0.1:6379/0 | nats://127.0.0.1:4222] [--sample] [--skew S]
      [--postgres postgresql://postgres@127.0.0.1:5432 [--workers 2]]

`cohortsync serve` runs in its own process (embedded mode: ingest, real-time evaluation and
delivery in one process over one DuckDB file; with `--bus`, `serve --role ingest` and
`--workers` processes of `serve --role worker` over Redis Streams or NATS JetStream; with
`--postgres`, the store is a Postgres database, which several workers can share). Its project
has three `refresh: realtime` audiences routed to a `webhook` destination: cart abandon (6 h)
and browse abandon (24 h), both excluding recent purchasers, and the purchase-suppression
audience (ordered in the last 7 days).
The webhook receiver runs in this process (uvicorn in a thread); it verifies every Standard
Webhooks signature with `cohortsync.destinations.signing.verify`, deduplicates on `webhook-id`
and notes when each change arrived.

Before each rate, the store holds known profiles (identified with email) and months of history,
all older than every window, so a profile's first purchase in the run always adds it to the
suppression audience. A separate load process then sends an open-loop stream of `/v1/*` calls
(page views, product views, cart adds, purchases, identifies; timestamps = now) at the offered
rate from raw keep-alive sockets, each purchase by a profile that has not bought in this run.
Latency = from the purchase's HTTP 200 (read by the load process) to the receiver's
acknowledgement of the webhook request carrying that profile's `add` to
`cio_recent_purch_7d_suppress` (both `time.monotonic()`, one clock for the whole machine).
Every purchase that got a 200 must be followed by its suppression: missing ones are counted
after a drain period. All traffic is on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import psycopg
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.serve import running

from cohortsync.destinations.signing import WebhookVerificationError, generate_secret, verify
from cohortsync.engine import Engine
from rawclient import RawClient
from serving import stop_gracefully

WRITE_KEY = "wk_bench_realtime_0123"
CART = "cio_cart_abandon_6h"
BROWSE = "cio_browse_abandon_24h"
SUPPRESS = "cio_recent_purch_7d_suppress"
# The stream: kind → share. Purchases are over-represented (a real shop sees ~1-3 %) so that a
# 20 s run yields enough of them for a p99.
MIX = {"page": 0.40, "product": 0.30, "cart": 0.15, "purchase": 0.10, "identify": 0.05}
REQUEST_DEADLINE = 10.0  # an ingest request unanswered after this counts as failed
AIM_P99_S = 1.0
AIM_RATE = 1000.0
CLIENT_CONNECTIONS = 128

console = Console(width=180)


def project_yaml(url: str, secret: str, store: str = ".cohortsync/store.duckdb") -> str:
    """The bench project: three real-time audiences to one webhook."""
    return f"""\
store: {store}
identity: {{primary: email, secondary: [phone], default_region: US}}
sources:
  web: {{write_key: {WRITE_KEY}}}
segments:
  cart_6h:
    all:
      - {{event: added_to_cart, within: 6h}}
      - {{not: {{event: order_completed, since: added_to_cart}}}}
  browse_24h:
    all:
      - {{event: product_viewed, within: 24h}}
      - {{not: {{event: added_to_cart, within: 24h}}}}
      - {{not: {{event: order_completed, within: 24h}}}}
  bought_7d: {{event: order_completed, within: 7d}}
audiences:
  {CART}: {{segment: cart_6h, exclude: [bought_7d], refresh: realtime, destinations: [hook]}}
  {BROWSE}: {{segment: browse_24h, exclude: [bought_7d], refresh: realtime, destinations: [hook]}}
  {SUPPRESS}: {{segment: bought_7d, refresh: realtime, destinations: [hook]}}
destinations:
  hook: {{type: webhook, url: "{url}", secret: "{secret}"}}
"""


def user(index: int) -> str:
    """The user id of known profile `index`."""
    return f"u{index:06d}"


def email(index: int) -> str:
    """The email of known profile `index` (its primary identifier)."""
    return f"person{index}@example.com"


def stamp(moment: datetime) -> str:
    """ISO-8601 UTC with `Z`, as SDKs send it."""
    return moment.isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- the receiver


@dataclass
class Arrival:
    """One change as the receiver acknowledged it."""

    at: float  # time.monotonic() when the receiver had verified the request
    audience: str
    op: str
    user_id: str
    recorded: str  # the change's own `at`: when cohortsync recorded it (UTC ISO)


class Receiver:
    """A Standard Webhooks receiver (raw ASGI): verify, deduplicate, note arrival times."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget everything received (each rate runs on a fresh store)."""
        with self._lock:
            self.arrivals: list[Arrival] = []
            self.first: dict[tuple[str, str, str], float] = {}
            self.ids: set[str] = set()
            self.requests = 0
            self.duplicates = 0
            self.rejected: list[str] = []

    def first_arrival(self, audience: str, op: str, user_id: str) -> float | None:
        """When the first `op` of `user_id` in `audience` was acknowledged, if it was."""
        with self._lock:
            return self.first.get((audience, op, user_id))

    def count(self, audience: str, op: str) -> int:
        """Distinct profiles that got `op` in `audience`."""
        with self._lock:
            return sum(1 for a, o, _ in self.first if a == audience and o == op)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Handle one POST: 204 once verified (a resend is acknowledged and counted)."""
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            verify(self.secret, headers, body)
        except WebhookVerificationError as exc:
            with self._lock:
                self.rejected.append(str(exc))
            await _answer(send, 401)
            return
        now = time.monotonic()
        payload = orjson.loads(body)
        with self._lock:
            self.requests += 1
            if headers["webhook-id"] in self.ids:
                self.duplicates += 1
            elif payload.get("type") == "audience.changes":
                self.ids.add(headers["webhook-id"])
                audience = payload["data"]["audience"]
                for change in payload["data"]["changes"]:
                    uid = change["identifiers"].get("user_id", change["profile_id"])
                    arrival = Arrival(now, audience, change["operation"], uid, change["at"])
                    self.arrivals.append(arrival)
                    self.first.setdefault((audience, arrival.op, uid), now)
        await _answer(send, 204)


async def _answer(send: Any, status: int) -> None:
    """An empty answer with this status."""
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


# --------------------------------------------------------------------------- the store


def history(profiles: int, per_profile: int, seed: int) -> Iterator[dict[str, Any]]:
    """Known profiles with months of past activity, all older than every window (8-120 days)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    kinds = [("page", None), ("track", "Product Viewed"), ("track", "Added To Cart")]
    kinds.append(("track", "Order Completed"))
    for i in range(profiles):
        start = now - timedelta(days=120)
        yield {
            "type": "identify",
            "messageId": f"h-{i}-id",
            "userId": user(i),
            "timestamp": stamp(start),
            "traits": {"email": email(i), "first_name": f"P{i}"},
        }
        for k in range(per_profile):
            kind, event = rng.choices(kinds, weights=(5, 4, 2, 1))[0]
            moment = now - timedelta(days=rng.uniform(8, 120))
            raw: dict[str, Any] = {
                "type": kind,
                "messageId": f"h-{i}-{k}",
                "userId": user(i),
                "timestamp": stamp(moment),
            }
            if event is not None:
                raw["event"] = event
                raw["properties"] = {"sku": f"SKU-{rng.randrange(200)}", "revenue": 42.0}
            else:
                raw["name"] = "Home"
            yield raw


def build_template(root: Path, profiles: int, per_profile: int, store: str) -> float:
    """A project folder whose store holds the known profiles and their history; seconds taken."""
    root.mkdir(parents=True)
    (root / "cohortsync.yml").write_text(
        project_yaml("http://127.0.0.1:9/unused", generate_secret(), store), encoding="utf-8"
    )
    started = time.perf_counter()
    with Engine.open(root) as engine:
        engine.ingest_messages(history(profiles, per_profile, seed=3), source="history")
    return time.perf_counter() - started


def store_counts(project: Path, store: str | None) -> tuple[int, int]:
    """(events, profiles) in a project's store (opened read-only, after the server stopped)."""
    if store is not None:
        with psycopg.connect(store) as pg:
            counted = pg.execute(
                "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM profiles)"
            ).fetchone()
        return (int(counted[0]), int(counted[1])) if counted else (0, 0)
    con = duckdb.connect(str(project / ".cohortsync" / "store.duckdb"), read_only=True)
    try:
        events = con.execute("SELECT count(*) FROM events").fetchone()
        profiles = con.execute("SELECT count(*) FROM profiles").fetchone()
    finally:
        con.close()
    return int(events[0]) if events else 0, int(profiles[0]) if profiles else 0


def template_database() -> str:
    """The name of this run's template database (Postgres store)."""
    return f"cohortsync_bench_rt_{os.getpid()}"


def copy_database(server_url: str, template: str, name: str) -> str:
    """A new database copied from `template` (a file-level copy: seconds, not a re-ingest)."""
    drop_database(server_url, name)
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as pg:
        pg.execute(f"CREATE DATABASE {name} TEMPLATE {template}")  # type: ignore[arg-type]
    return f"{server_url}/{name}"


def drop_database(server_url: str, name: str) -> None:
    """Drop a bench database if it exists (connections to it are closed first)."""
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as pg:
        pg.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the server process


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# With --sample, the server starts through this: a thread that, while the file `<out>.on`
# exists, notes every 5 ms each thread's innermost cohortsync frame and innermost frame (file,
# function, line), and writes the counts and the thread names to `<out>` at exit.
SAMPLER = """
import atexit, collections, json, os, sys, threading, time
out = sys.argv.pop(1)
counts = collections.Counter()
names = {}
def label(frame, path):
    return f"{path}:{frame.f_code.co_name}:{frame.f_lineno}"
def where(frame):
    inner = label(frame, frame.f_code.co_filename.rsplit('/', 1)[-1])
    ours = None
    while frame is not None and ours is None:
        if '/cohortsync/' in frame.f_code.co_filename:
            ours = label(frame, frame.f_code.co_filename.split('/cohortsync/')[-1])
        frame = frame.f_back
    return ours or '-', inner
def sample():
    me = threading.get_ident()
    while True:
        time.sleep(0.005)
        if not os.path.exists(out + '.on'):
            continue
        threads = {t.ident: t for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            thread = threads.get(ident)
            if ident == me or thread is None:
                continue
            names[thread.native_id] = thread.name
            counts[(thread.name, *where(frame))] += 1
def dump():
    with open(out, 'w') as f:
        json.dump({'names': names, 'samples': [[*k, v] for k, v in counts.items()]}, f)
atexit.register(dump)
threading.Thread(target=sample, name='bench-sampler', daemon=True).start()
sys.argv[0] = 'cohortsync'
from cohortsync.cli import main
main()
"""


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds used so far by each thread (native id) of a process."""
    used = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            used[int(task.name)] = cpu_seconds_of(task / "stat")
    return used


def _start(cmd: list[str], errors: Path) -> subprocess.Popen[bytes]:
    """Start a server process, its stderr to `errors`."""
    with errors.open("wb") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)


@contextlib.contextmanager
def server(
    project: Path, sample: Path | None = None, bus: str | None = None, workers: int = 1
) -> Iterator[tuple[str, list[int]]]:
    """`cohortsync serve` in its own process; yields (url, pids); stopped with SIGINT on exit.

    With `bus`, `--role ingest` (the URL) publishing to the bus on a fresh stream prefix, and
    `workers` processes of `--role worker` (the first one's pid first), the prefix dropped
    after. Several workers need a Postgres store.
    Their stderr goes to files (a pipe nobody reads would block a server once full). With
    `sample`, the stack sampler above runs inside the process that holds the store.
    """
    port = free_port()
    head = [sys.executable, "-m", "cohortsync", "serve"]
    sampled = head if sample is None else [sys.executable, "-c", SAMPLER, str(sample), "serve"]
    where = ["--project", str(project)]
    listen = ["--host", "127.0.0.1", "--port", str(port)]
    procs: list[subprocess.Popen[bytes]] = []
    prefix = f"bench-rt-{os.getpid()}-{port}"
    try:
        if bus is None:
            procs.append(_start(sampled + where + listen, project / "serve.stderr"))
        else:
            roles = ["--bus", bus, "--bus-stream", prefix, "--role"]
            for number in range(workers):
                cmd = [*(sampled if number == 0 else head), *where, *roles, "worker"]
                procs.append(_start(cmd, project / f"worker{number}.stderr"))
            procs.append(
                _start([*head, *where, *listen, *roles, "ingest"], project / "ingest.stderr")
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    logs = "".join(f.read_text()[-2000:] for f in project.glob("*.stderr"))
                    raise RuntimeError(f"server exited: {logs}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not answer /health within 60 s")
            time.sleep(0.05)
        yield url, [proc.pid for proc in procs]
    finally:
        for proc in reversed(procs):  # ingest first, then the worker drains what it has
            stop_gracefully(proc)
        if bus is not None:
            from cohortsync.realtime.bus import open_bus

            channel = open_bus(bus, prefix=prefix)
            channel.drop()
            channel.close()


def cpu_seconds_of(stat: Path) -> float:
    """User + system CPU seconds in a /proc `stat` file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, over every core (from /proc)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values[:8]) - idle) / tick, sum(values[:8]) / tick


# --------------------------------------------------------------------------- the load process


@dataclass
class LoadPlan:
    """What the load process sends: `rate` calls/s for `seconds` to `url`."""

    url: str
    rate: float
    seconds: float
    profiles: int
    buyers: list[int]  # distinct profiles, in the order they buy
    seed: int
    run: str
    skew: float = 0.0  # the senders' clock minus the server's (s)


@dataclass
class LoadResult:
    """What the load process saw."""

    statuses: dict[int, int]
    latencies: list[tuple[float, float]]  # per request: (due, from due to its answer) (s)
    purchases: list[tuple[str, float, float, float]]  # (user, due, 200 monotonic, 200 wall)
    attempted_buyers: list[str]
    sent_s: float
    total_s: float
    cpu_s: float


def message(
    kind: str, uid: str, message_id: str, rng: random.Random, skew: float = 0.0
) -> tuple[str, dict[str, Any]]:
    """(path, body) of one call of the stream, stamped now by a clock `skew` seconds off."""
    now = stamp(datetime.now(UTC) + timedelta(seconds=skew))
    base: dict[str, Any] = {"messageId": message_id, "userId": uid, "timestamp": now}
    sku = f"SKU-{rng.randrange(200)}"
    if kind == "page":
        return "/v1/page", {**base, "type": "page", "name": "Home"}
    if kind == "identify":
        traits = {"email": email(int(uid[1:])), "last_seen_page": rng.randrange(50)}
        return "/v1/identify", {**base, "type": "identify", "traits": traits}
    event = {"product": "Product Viewed", "cart": "Added To Cart"}.get(kind, "Order Completed")
    props: dict[str, Any] = {"sku": sku}
    if kind == "purchase":
        props |= {"revenue": 58.0, "currency": "USD", "order_id": message_id}
    return "/v1/track", {**base, "type": "track", "event": event, "properties": props}


async def _load(plan: LoadPlan) -> LoadResult:
    cpu0 = os.times()
    rng = random.Random(plan.seed)
    count = int(plan.rate * plan.seconds)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=count)
    buyers = iter(plan.buyers)
    statuses: dict[int, int] = {}
    latencies: list[tuple[float, float]] = []
    purchases: list[tuple[str, float, float, float]] = []
    attempted: list[str] = []

    async with RawClient(plan.url, CLIENT_CONNECTIONS, WRITE_KEY) as client:

        async def one(request: bytes, due: float, buyer: str | None) -> None:
            try:
                code, _ = await asyncio.wait_for(client.send(request), REQUEST_DEADLINE)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                code = -1
            done, wall = time.monotonic(), time.time()
            statuses[code] = statuses.get(code, 0) + 1
            latencies.append((due, done - due))
            if buyer is not None and code == 200:
                purchases.append((buyer, due, done, wall))

        tasks = []
        start = time.monotonic() + 0.1
        for i, kind in enumerate(kinds):
            buyer = None
            if kind == "purchase":
                index = next(buyers, None)
                buyer = None if index is None else user(index)
            uid = buyer or user(rng.randrange(plan.profiles))
            if buyer is not None:
                attempted.append(buyer)
            sent = "cart" if kind == "purchase" and buyer is None else kind
            path, body = message(sent, uid, f"{plan.run}-{i}", rng, plan.skew)
            due = start + i / plan.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            request = client.request(path, orjson.dumps(body))
            tasks.append(asyncio.create_task(one(request, due, buyer)))
        sent_s = time.monotonic() - start
        await asyncio.gather(*tasks)
        total_s = time.monotonic() - start
    cpu1 = os.times()
    cpu = cpu1.user + cpu1.system - cpu0.user - cpu0.system
    return LoadResult(statuses, latencies, purchases, attempted, sent_s, total_s, cpu)


def run_load(plan: LoadPlan) -> LoadResult:
    """Entry point of the load process: send the plan open-loop on uvloop."""
    import uvloop

    return uvloop.run(_load(plan))


# --------------------------------------------------------------------------- one rate


@dataclass
class RateResult:
    """Everything measured at one offered rate."""

    offered: float
    achieved: float
    requests: int
    statuses: dict[int, int]
    purchases: int
    latencies_ms: list[float]  # per purchase: 200 → suppression acknowledged
    timeline: list[tuple[float, float]]  # per purchase: (its send, s into the run; latency ms)
    recorded_ms: list[float]  # per purchase: 200 → cohortsync recorded the change (wall clocks)
    from_send_ms: list[float]  # per purchase: its scheduled send → suppression acknowledged
    missing: list[str]
    unexpected: int
    duplicates: int
    rejected: int
    ingest_ms: list[float]
    growing: bool
    server_cores: float
    client_cores: float
    others_cores: float
    loadavg: str
    store_events: int = 0
    cart_adds: int = 0
    cart_removes: int = 0
    notes: list[str] = field(default_factory=list)

    def pct(self, values: list[float], q: float) -> float:
        """The q-th percentile (nearest rank) of `values`; NaN when empty."""
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    @property
    def sustainable(self) -> bool:
        """Kept up: ≥ 95 % of the offered rate answered, none failed, latency not growing.

        Missing suppressions are a correctness failure shown on their own, not a throughput
        limit: they also happen at low rates (see bench/README.md).
        """
        failed = sum(n for code, n in self.statuses.items() if code != 200)
        return self.achieved >= 0.95 * self.offered and failed == 0 and not self.growing


def growing(points: list[tuple[float, float]]) -> bool:
    """Whether latency rises through the run: the median of the last quarter (by send time)
    is over twice the first quarter's plus 100 ms."""
    if len(points) < 8:
        return False
    ordered = [v for _, v in sorted(points)]
    quarter = len(ordered) // 4
    first = sorted(ordered[:quarter])[quarter // 2]
    last = sorted(ordered[-quarter:])[quarter // 2]
    return last > 2 * first + 100.0


def wait_for(check: Any, seconds: float) -> bool:
    """Poll `check()` until true or `seconds` passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def warm_up(url: str, receiver: Receiver, seconds: float) -> None:
    """Send a few calls of each kind and wait for their suppressions: the whole path is warm
    (first delivery, HTTP connections) and the history seeding is evaluated before measuring."""
    now = stamp(datetime.now(UTC))
    batch: list[dict[str, Any]] = []
    for k in range(5):
        uid = f"warm{k}"
        common = {"userId": uid, "timestamp": now}
        batch += [
            {
                **common,
                "type": "identify",
                "messageId": f"w{k}a",
                "traits": {"email": f"{uid}@x.io"},
            },
            {**common, "type": "track", "messageId": f"w{k}b", "event": "Product Viewed"},
            {**common, "type": "track", "messageId": f"w{k}c", "event": "Added To Cart"},
            {**common, "type": "track", "messageId": f"w{k}d", "event": "Order Completed"},
        ]
    with httpx.Client(auth=(WRITE_KEY, "")) as http:
        for raw in batch:
            http.post(f"{url}/v1/{raw['type']}", json=raw).raise_for_status()
    if not wait_for(
        lambda: all(receiver.first_arrival(SUPPRESS, "add", f"warm{k}") for k in range(5)), seconds
    ):
        raise RuntimeError(f"warm-up suppressions did not arrive within {seconds:.0f} s")


@dataclass
class Setup:
    """What every rate shares: the template store, the receiver, the stream's length."""

    template: Path
    profiles: int
    workdir: Path
    receiver: Receiver
    receiver_url: str
    seconds: float
    drain: float
    sample: bool = False
    skew: float = 0.0
    bus: str | None = None
    workers: int = 1
    postgres: str | None = None
    """Server URL (no database) when the store is Postgres: each rate gets a copy of the
    template database."""


def profile_report(samples: Path, cpu: dict[int, float], window: float, top: int = 6) -> list[str]:
    """Per server thread: cores used in the window and where its samples fell (most first)."""
    data = json.loads(samples.read_text())
    names = {int(k): v for k, v in data["names"].items()}
    cores: dict[str, float] = {}
    for native, used in cpu.items():
        name = names.get(native, f"thread {native}")
        cores[name] = cores.get(name, 0.0) + used / window
    by_thread: dict[str, list[tuple[int, str, str]]] = {}
    for name, ours, inner, count in data["samples"]:
        by_thread.setdefault(name, []).append((count, ours, inner))
    lines = []
    for name, rows in sorted(by_thread.items(), key=lambda kv: -cores.get(kv[0], 0.0)):
        total = sum(c for c, _, _ in rows)
        lines.append(f"{name}: {cores.get(name, 0.0):.2f} cores, {total} samples")
        for count, ours, inner in sorted(rows, reverse=True)[:top]:
            lines.append(f"    {100 * count / total:5.1f} %  {ours}  ←  {inner}")
    unnamed = sum(v for k, v in cores.items() if k.startswith("thread "))
    lines.append(f"threads without a Python name (DuckDB's own, …): {unnamed:.2f} cores")
    return lines


def measure(rate: float, setup: Setup) -> RateResult:
    """One offered rate on a fresh copy of the template store."""
    receiver, seconds, drain, profiles = setup.receiver, setup.seconds, setup.drain, setup.profiles
    project = setup.workdir / f"rate-{rate:.0f}"
    shutil.copytree(setup.template, project)
    store = None
    name = f"{template_database()}_r{rate:.0f}"
    if setup.postgres is not None:
        store = copy_database(setup.postgres, template_database(), name)
    (project / "cohortsync.yml").write_text(
        project_yaml(setup.receiver_url, receiver.secret, store or ".cohortsync/store.duckdb"),
        encoding="utf-8",
    )
    count = int(rate * seconds)
    rng = random.Random(int(rate))
    buyers = rng.sample(range(profiles), min(profiles, int(count * MIX["purchase"] * 1.5) + 10))
    receiver.reset()
    samples = project / "samples.json" if setup.sample else None
    switch = Path(f"{samples}.on")
    with server(project, samples, setup.bus, setup.workers) as (url, pids):
        pid = pids[0]
        warm_up(url, receiver, seconds=60)
        receiver.reset()
        plan = LoadPlan(
            url, rate, seconds, profiles, buyers, int(rate) + 1, f"r{rate:.0f}", setup.skew
        )
        with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            pool.submit(os.getpid).result()  # the load process is started before the counters
            loadavg = Path("/proc/loadavg").read_text().split()[:3]
            busy0, started = machine_busy()[0], time.monotonic()
            server0 = sum(cpu_seconds(p) for p in pids)
            self0, threads0 = time.process_time(), thread_cpu(pid)
            if samples is not None:
                switch.touch()
            load = pool.submit(run_load, plan).result()
            switch.unlink(missing_ok=True)
            server_cpu = sum(cpu_seconds(p) for p in pids) - server0
            threads = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu(pid).items()}
            busy1, window = machine_busy()[0], time.monotonic() - started
            own = time.process_time() - self0
        expected = {uid for uid, *_ in load.purchases}
        wait_for(lambda: all(receiver.first_arrival(SUPPRESS, "add", u) for u in expected), drain)
        time.sleep(0.5)  # late duplicates, unexpected adds
    events, _ = store_counts(project, store)
    if setup.postgres is not None:
        drop_database(setup.postgres, name)
    notes = [] if samples is None else profile_report(samples, threads, window)
    latencies, recorded, from_send, points, missing = [], [], [], [], []
    for uid, due, t200, _ in load.purchases:
        arrived = receiver.first_arrival(SUPPRESS, "add", uid)
        if arrived is None:
            missing.append(uid)
            continue
        latencies.append((arrived - t200) * 1000)
        points.append((due, (arrived - t200) * 1000))
        from_send.append((arrived - due) * 1000)
    at_of = {
        a.user_id: a.recorded for a in receiver.arrivals if a.audience == SUPPRESS and a.op == "add"
    }
    for uid, _, _, wall200 in load.purchases:
        if uid in at_of:
            moment = datetime.fromisoformat(at_of[uid].replace("Z", "+00:00")).timestamp()
            recorded.append((moment - wall200) * 1000)
    attempted = set(load.attempted_buyers)
    adds = {a.user_id for a in receiver.arrivals if a.audience == SUPPRESS and a.op == "add"}
    return RateResult(
        offered=rate,
        achieved=load.statuses.get(200, 0) / load.total_s if load.total_s else 0.0,
        requests=len(load.latencies),
        statuses=load.statuses,
        purchases=len(load.purchases),
        latencies_ms=latencies,
        timeline=points,
        recorded_ms=recorded,
        from_send_ms=from_send,
        missing=sorted(missing),
        unexpected=len(adds - attempted),
        duplicates=receiver.duplicates,
        rejected=len(receiver.rejected),
        ingest_ms=[v * 1000 for _, v in load.latencies],
        growing=growing(points) or growing([(d, v * 1000) for d, v in load.latencies]),
        server_cores=server_cpu / window,
        client_cores=load.cpu_s / window,
        others_cores=max(0.0, (busy1 - busy0) - server_cpu - load.cpu_s - own) / window,
        loadavg=" ".join(loadavg),
        store_events=events,
        cart_adds=receiver.count(CART, "add"),
        cart_removes=receiver.count(CART, "remove"),
        notes=notes,
    )


# --------------------------------------------------------------------------- main


def describe(result: RateResult) -> None:
    """One line per rate as it finishes."""
    r = result
    console.print(
        f"   offered {r.offered:,.0f}/s → {r.achieved:,.0f}/s answered 200, statuses {r.statuses}; "
        f"{r.purchases} purchases, suppression p50/p95/p99 "
        f"{r.pct(r.latencies_ms, 50):.0f}/{r.pct(r.latencies_ms, 95):.0f}/"
        f"{r.pct(r.latencies_ms, 99):.0f} ms (max {max(r.latencies_ms, default=0):.0f}); "
        f"200 → recorded p50/p99 {r.pct(r.recorded_ms, 50):.0f}/{r.pct(r.recorded_ms, 99):.0f} ms; "
        f"send → suppression p50/p99 {r.pct(r.from_send_ms, 50):.0f}/"
        f"{r.pct(r.from_send_ms, 99):.0f} ms; "
        f"missing {len(r.missing)}, unexpected {r.unexpected}, resends {r.duplicates}, "
        f"bad signatures {r.rejected}; ingest p50/p99 {r.pct(r.ingest_ms, 50):.0f}/"
        f"{r.pct(r.ingest_ms, 99):.0f} ms; cart adds/removes {r.cart_adds}/{r.cart_removes}; "
        f"CPU server {r.server_cores:.2f}, load client {r.client_cores:.2f}, others "
        f"{r.others_cores:.2f} cores (loadavg before {r.loadavg}); "
        f"store {r.store_events:,} events; "
        f"{'sustained' if r.sustainable else 'NOT sustained'}"
        + (" (latency growing)" if r.growing else "")
    )


def table(results: list[RateResult], mode: str) -> Table:
    """The summary table."""
    out = Table(title=f"cohortsync real time ({mode}): purchase → suppression at the webhook")
    for column in (
        "offered ev/s",
        "achieved ev/s",
        "purchases",
        "200 → suppression p50 / p95 / p99 ms",
        "max ms",
        "send → supp. p99 ms",
        "missing",
        "ingest p50 / p99 ms",
        "server CPU",
        "others' CPU",
        "sustained",
    ):
        out.add_column(column, justify="right")
    for r in results:
        p99 = r.pct(r.latencies_ms, 99)
        shown = f"{p99:,.0f}"
        if r.offered == AIM_RATE:
            shown = f"[green]{shown}[/]" if p99 < AIM_P99_S * 1000 else f"[red]{shown}[/]"
        out.add_row(
            f"{r.offered:,.0f}",
            f"{r.achieved:,.0f}",
            f"{r.purchases:,}",
            f"{r.pct(r.latencies_ms, 50):,.0f} / {r.pct(r.latencies_ms, 95):,.0f} / {shown}",
            f"{max(r.latencies_ms, default=0):,.0f}",
            f"{r.pct(r.from_send_ms, 99):,.0f}",
            f"[red]{len(r.missing)}[/]" if r.missing else "0",
            f"{r.pct(r.ingest_ms, 50):,.0f} / {r.pct(r.ingest_ms, 99):,.0f}",
            f"{r.server_cores:.2f}",
            f"{r.others_cores:.2f}",
            "[green]yes[/]" if r.sustainable else "[red]no[/]",
        )
    return out


def search(results: list[RateResult], run: Any, ceiling: float) -> None:
    """Step ×1.5 from the rates measured until one is sustained and a higher one is not, then
    bisect until the two are within 15 % of each other."""
    best = max((r.offered for r in results if r.sustainable), default=None)
    worst = min(
        (r.offered for r in results if not r.sustainable and (best is None or r.offered > best)),
        default=None,
    )
    while worst is None and best is not None and best * 1.5 <= ceiling:
        result = run(round(best * 1.5, -1))
        results.append(result)
        if result.sustainable:
            best = result.offered
        else:
            worst = result.offered
    while best is None and worst is not None and worst / 1.5 >= 50:
        result = run(round(worst / 1.5, -1))
        results.append(result)
        if result.sustainable:
            best = result.offered
        else:
            worst = result.offered
    while best is not None and worst is not None and worst / best > 1.15:
        result = run(round((best + worst) / 2, -1))
        results.append(result)
        if result.sustainable:
            best = result.offered
        else:
            worst = result.offered


def revision() -> str:
    """The checkout's commit, and whether src/ differs from it (what is being measured)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        """The output of one git command in the checkout."""
        done = subprocess.run(["git", *args], check=False, cwd=root, capture_output=True)
        return done.stdout.decode().strip()

    try:
        head, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "src")
    except OSError:
        return "unknown"
    return f"{head}{' + uncommitted src changes' if dirty else ''}"


def main() -> None:
    """Build the store once, then measure each rate on a fresh copy of it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 1000.0])
    parser.add_argument(
        "--search", action="store_true", help="then find the highest sustained rate"
    )
    parser.add_argument("--ceiling", type=float, default=10_000.0, help="highest rate searched")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each rate's stream")
    parser.add_argument("--drain", type=float, default=60.0, help="wait for late suppressions")
    parser.add_argument("--profiles", type=int, default=20_000, help="known profiles")
    parser.add_argument("--history", type=int, default=10, help="past events per profile")
    parser.add_argument("--quick", action="store_true", help="5 s per rate, 5,000 profiles")
    parser.add_argument(
        "--bus",
        help="redis://127.0.0.1:6379/0 or nats://127.0.0.1:4222: serve --role ingest and "
        "--role worker over this bus instead of the embedded mode",
    )
    parser.add_argument(
        "--skew",
        type=float,
        default=0.0,
        help="stamp events with a clock this many seconds ahead (negative: behind)",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="keep the store in Postgres at this server (e.g. postgresql://postgres@127.0.0.1:5432"
        ", no database: the bench creates and drops its own) instead of a DuckDB file",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="--role worker processes (with --bus; >1 needs --postgres)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--sample", action="store_true", help="sample the server's threads (where time goes)"
    )
    args = parser.parse_args()
    if args.workers > 1 and (args.bus is None or args.postgres is None):
        parser.error(
            "--workers above 1 needs --bus and --postgres (a store several processes write)"
        )
    if args.quick:
        args.seconds, args.profiles = 5.0, 5_000

    console.print(
        f"cohortsync real-time bench — Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"duckdb {duckdb.__version__}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"loadavg {' '.join(Path('/proc/loadavg').read_text().split()[:3])}, code {revision()}"
    )
    receiver = Receiver(generate_secret())
    results: list[RateResult] = []
    with tempfile.TemporaryDirectory(prefix="cohortsync-rt-") as tmp, running(receiver) as base:  # type: ignore[arg-type]
        workdir = Path(tmp)
        template = workdir / "template"
        console.print(
            f"[bold]store[/] — {args.profiles:,} known profiles, {args.history} past events each…"
        )
        store = ".cohortsync/store.duckdb"
        if args.postgres is not None:
            drop_database(args.postgres, template_database())
            with psycopg.connect(f"{args.postgres}/postgres", autocommit=True) as pg:
                pg.execute(f"CREATE DATABASE {template_database()}")  # type: ignore[arg-type]
            store = f"{args.postgres}/{template_database()}"
        took = build_template(template, args.profiles, args.history, store)
        console.print(f"   built in {took:.1f} s")
        setup = Setup(
            template,
            args.profiles,
            workdir,
            receiver,
            f"{base}/hook",
            args.seconds,
            args.drain,
            args.sample,
            args.skew,
            args.bus,
            args.workers,
            args.postgres,
        )

        def run(rate: float) -> RateResult:
            console.print(f"[bold]{rate:,.0f} events/s[/] for {args.seconds:.0f} s…")
            result = measure(rate, setup)
            describe(result)
            for line in result.notes:
                console.print(f"   {line}", highlight=False, markup=False)
            shutil.rmtree(workdir / f"rate-{rate:.0f}", ignore_errors=True)
            return result

        for rate in args.rates:
            results.append(run(rate))
        if args.search:
            search(results, run, args.ceiling)
    if args.postgres is not None:
        drop_database(args.postgres, template_database())

    results.sort(key=lambda r: r.offered)
    engine = "Postgres" if args.postgres else "DuckDB"
    mode = (
        f"embedded, {engine} store"
        if args.bus is None
        else f"{args.bus.split(':')[0]} bus, ingest + {args.workers} worker(s), {engine} store"
    )
    console.print(table(results, mode))
    lost = [r for r in results if r.missing]
    for r in lost:
        console.print(
            f"[red]conservation: {r.offered:,.0f}/s: {len(r.missing)} of {r.purchases:,} "
            f"purchases never suppressed[/] (after a {args.drain:.0f} s drain), "
            f"e.g. {r.missing[:5]}"
        )
    if not lost:
        console.print("conservation: every purchase that got a 200 was suppressed at the receiver")
    sustained = [r.offered for r in results if r.sustainable]
    console.print(
        f"highest sustained rate: {max(sustained):,.0f} events/s"
        if sustained
        else "no rate sustained"
    )
    if args.json:
        rows = [asdict(r) | {"sustainable": r.sustainable} for r in results]
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
