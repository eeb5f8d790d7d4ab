"""kill -9 of the delivery worker at random points, while profiles flap in and out of an audience.

After restart and drain, the webhook receiver's applied state equals the desired membership
for every profile (no lost entry or exit), and no change was ever sent under two batch ids
(resends keep their id, and the receiver applies an id once).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cohortsync.engine import Engine
from tests.conftest import PROJECT_YAML
from tests.fakes.webhook import WebhookFake
from tests.sync.conftest import person, track

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals (kill -9)")

RUNS = int(os.environ.get("COHORTSYNC_CRASH_RUNS", "50"))
PROFILES = 1200
AUDIENCE = "cio_cart_1h"


def project_yaml(url: str, secret: str) -> str:
    return (
        PROJECT_YAML
        + f"""\
segments:
  cart_1h: {{event: added_to_cart, within: 1h}}
audiences:
  {AUDIENCE}:
    segment: cart_1h
    holdout: {{percent: 20}}
    destinations: [hook]
destinations:
  hook: {{type: webhook, url: "{url}", secret: "{secret}"}}
"""
    )


def sync_process(project: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cohortsync", "sync", "--project", str(project)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_at_random_point(
    process: subprocess.Popen[bytes], fake: WebhookFake, rng: random.Random
) -> str:
    """Kill -9 after a random number of deliveries reached the receiver, or after a random time."""
    mode = rng.choice(["requests", "requests", "time"])
    if mode == "time":
        delay = rng.uniform(0.2, 2.5)
        try:
            process.wait(timeout=delay)
            return "finished"
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return "killed by time"
    target = len(fake.log) + rng.randint(1, 3)
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        if len(fake.log) >= target:
            time.sleep(rng.uniform(0, 0.02))  # before or after the worker records the answer
            process.send_signal(signal.SIGKILL)
            process.wait()
            return "killed after a delivery"
        time.sleep(0.0005)
    process.wait(timeout=30)
    return "finished"


@pytest.fixture
def receiver() -> Iterator[WebhookFake]:
    with WebhookFake().serving() as fake:
        yield fake


def test_kill_9_of_the_delivery_worker_loses_nothing_and_applies_nothing_twice(
    project_dir: Path, receiver: WebhookFake
) -> None:
    (project_dir / "cohortsync.yml").write_text(
        project_yaml(receiver.url, receiver.secret), encoding="utf-8"
    )
    rng = random.Random(20261129)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    with Engine.open(project_dir) as engine:
        engine.ingest_messages([person(n, start - timedelta(hours=1)) for n in range(PROFILES)])
    outcomes: dict[str, int] = {}
    for run in range(RUNS):
        at = start + timedelta(hours=2 * run)
        flapping = rng.sample(range(PROFILES), k=rng.randint(PROFILES // 4, PROFILES // 2))
        with Engine.open(project_dir) as engine:
            engine.ingest_messages(
                [track(n, "added_to_cart", at - timedelta(minutes=5)) for n in flapping]
            )
            engine.compute(at)
        outcome = kill_at_random_point(sync_process(project_dir), receiver, rng)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    for _ in range(2):  # restart and drain
        finished = sync_process(project_dir)
        _, stderr = finished.communicate(timeout=120)
        assert finished.returncode == 0, stderr.decode()

    with Engine.open(project_dir) as engine:
        desired = {m.profile_id for m in engine.members(AUDIENCE)}
        pending = engine.store.query("SELECT count(*) FROM outbox")  # type: ignore[attr-defined]
    held: set[str] = set()
    batches_of: dict[int, set[str]] = {}
    for webhook_id, body in receiver.applied:
        for change in body["data"]["changes"]:
            batches_of.setdefault(change["change_id"], set()).add(webhook_id)
            if change["operation"] == "add":
                held.add(change["profile_id"])
            else:
                held.discard(change["profile_id"])
    lost_exits = held - desired
    lost_entries = desired - held
    sent_twice = {c: ids for c, ids in batches_of.items() if len(ids) > 1}
    print(f"runs {RUNS}: {outcomes}; resends seen by the receiver: {receiver.duplicates}")
    assert (
        outcomes.get("killed after a delivery", 0) + outcomes.get("killed by time", 0) >= RUNS // 2
    )
    assert pending == [(0,)]
    assert (len(lost_exits), len(lost_entries), len(sent_twice)) == (0, 0, 0)
    assert len(desired) > 0
