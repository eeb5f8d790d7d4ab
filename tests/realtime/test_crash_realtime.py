"""kill -9 of `cohortsync serve` while events stream in: after restart nothing is skipped.

Real-time audiences are evaluated as events are stored; the server is killed four times at
random moments mid-stream and restarted. When the stream is over and the server has stopped,
every real-time audience and segment holds exactly what a batch compute gives for now.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cohortsync.audiences.compute import compute_members
from cohortsync.engine import Engine
from cohortsync.events.timestamps import to_micros
from cohortsync.realtime.index import build_index
from tests.conftest import PROJECT_YAML, WRITE_KEY, free_port, wait_until_healthy
from tests.realtime.conftest import REALTIME_YAML, message

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals (kill -9)")

PEOPLE = 60
KILLS = 4
SENDERS = 3


def start(project: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "cohortsync", "serve", "--project", str(project),
         "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", 30, process)
    except AssertionError:
        process.kill()
        raise
    return process


def random_event(rng: random.Random) -> dict[str, Any]:
    user = f"u{rng.randrange(PEOPLE)}"
    now = datetime.now(UTC)
    roll = rng.random()
    if roll < 0.4:
        return message("track", user, now, event="Added To Cart")
    if roll < 0.6:
        return message("track", user, now, event="Order Completed", properties={"revenue": 60})
    if roll < 0.9:
        return message("track", user, now, event="Product Viewed")
    traits = {"email": f"{user}@example.com", "tier": rng.choice(["vip", "regular"])}
    return message("identify", user, now, traits=traits)


def stream(port: int, rng: random.Random, stop: threading.Event) -> None:
    """Send events one by one until stopped; a refused connection (the server is down) waits."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(WRITE_KEY, "")) as client:
        while not stop.is_set():
            raw = random_event(rng)
            try:
                client.post(f"/v1/{raw['type']}", json=raw, timeout=5)
            except httpx.TransportError:
                time.sleep(0.05)


def test_kill_9_mid_stream_skips_no_event(project_dir: Path) -> None:
    text = PROJECT_YAML + REALTIME_YAML.replace("nightly_vip: {segment: vip, refresh: 1d}", "")
    (project_dir / "cohortsync.yml").write_text(text, encoding="utf-8")
    port = free_port()
    rng = random.Random(5)
    stop = threading.Event()
    server = start(project_dir, port)
    senders = [
        threading.Thread(target=stream, args=(port, random.Random(n), stop), daemon=True)
        for n in range(SENDERS)
    ]
    for sender in senders:
        sender.start()
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.5, 2.0))
        server.send_signal(signal.SIGKILL)
        server.wait()
        server = start(project_dir, port)
    stop.set()
    for sender in senders:
        sender.join(timeout=10)
    # A last burst, acknowledged, then kill -9 at once: no later event will revisit these
    # profiles, so only the restart's catch-up can evaluate them.
    burst_rng = random.Random(99)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(WRITE_KEY, "")) as client:
        for _ in range(40):
            raw = random_event(burst_rng)
            assert client.post(f"/v1/{raw['type']}", json=raw, timeout=5).status_code == 200
    server.send_signal(signal.SIGKILL)
    server.wait()
    server = start(project_dir, port)
    time.sleep(1.5)  # catch-up and its round of evaluation
    server.send_signal(signal.SIGINT)
    _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr.decode()

    with Engine.open(project_dir) as engine:
        stored = engine.stats()["events"]["total"]
        index = build_index(engine.segments)
        batch = compute_members(engine.store, engine.segments, to_micros(datetime.now(UTC)))
        for kind, name in index.scope:
            realtime = {p for p, _ in engine.store.membership(kind, name)}
            assert realtime == batch.ids(kind, name), f"{kind} {name}"
    assert stored > 100
