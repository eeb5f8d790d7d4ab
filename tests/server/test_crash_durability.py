"""kill -9 the server while batches stream in: every acknowledged event survives, exactly once."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from cohortsync.engine import Engine
from tests.conftest import WRITE_KEY, free_port, wait_until_healthy

COHORTSYNC = Path(sys.executable).with_name("cohortsync")


def _start(project: Path, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [str(COHORTSYNC), "serve", "--project", str(project), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until_healthy(f"http://127.0.0.1:{port}", 20, server)
    return server


def _batch(number: int) -> dict[str, object]:
    return {
        "batch": [
            {
                "type": "track",
                "messageId": f"crash-{number}-{i}",
                "userId": f"u{(number * 7 + i) % 40}",
                "event": "Product Viewed",
                "properties": {"batch": number},
            }
            for i in range(50)
        ]
    }


def test_acknowledged_events_survive_kill_9_and_retries_store_them_once(
    project_dir: Path,
) -> None:
    rng = random.Random(7)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/batch"
    batches = 120
    acknowledged: set[int] = set()
    stop = threading.Event()

    def send_until_killed() -> None:
        """Send every batch not yet acknowledged, one after another, until the server dies."""
        with httpx.Client(auth=(WRITE_KEY, ""), timeout=5) as client:
            for number in range(batches):
                if number in acknowledged or stop.is_set():
                    continue
                try:
                    response = client.post(url, json=_batch(number))
                except httpx.TransportError:
                    return  # the server is gone; the next round retries
                if response.status_code == 200:
                    acknowledged.add(number)

    for _round in range(3):
        server = _start(project_dir, port)
        stop.clear()
        sender = threading.Thread(target=send_until_killed)
        sender.start()
        time.sleep(rng.uniform(0.2, 0.6))
        server.send_signal(signal.SIGKILL)  # no shutdown, no flush: the hardest stop there is
        server.wait(timeout=10)
        stop.set()
        sender.join(timeout=10)
        with Engine.open(project_dir) as engine:  # what a restart finds on disk
            stored = {
                row[0]
                for row in engine.store.query("SELECT DISTINCT properties->>'batch' FROM events")
            }
        assert {str(n) for n in acknowledged} <= stored, "an acknowledged batch was lost"

    # A last, clean run retries everything, including batches that were acknowledged already.
    server = _start(project_dir, port)
    try:
        with httpx.Client(auth=(WRITE_KEY, ""), timeout=10) as client:
            for number in range(batches):
                assert client.post(url, json=_batch(number)).status_code == 200
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)
    with Engine.open(project_dir) as engine:
        total, distinct = engine.store.query(
            "SELECT count(*), count(DISTINCT message_id) FROM events"
        )[0]
    assert total == distinct == batches * 50
    assert acknowledged, "the server never acknowledged anything before being killed"
