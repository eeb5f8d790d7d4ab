"""kill -9 of the delivery worker at random points, while profiles flap in and out of an audience.

After restart and drain, the receiver's state equals the desired membership for every profile
(no lost entry or exit): a webhook receiver, where no change was ever sent under two batch ids
either (resends keep their id, and the receiver applies an id once), and Google Customer Match
through the Data Manager fake (OAuth, user list, ingest and remove).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cohortsync.destinations.google_identifiers import hash_google
from cohortsync.engine import Engine
from tests.conftest import PROJECT_YAML
from tests.fakes.base import FakeServer
from tests.fakes.google_data_manager import GoogleDataManagerFake
from tests.fakes.webhook import WebhookFake
from tests.sync.conftest import person, track
from tests.sync.platforms import AUDIENCE_DESTINATION as ADS
from tests.sync.platforms import CONVERSION_DESTINATION as CONVERSIONS
from tests.sync.platforms import GooglePlatform

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals (kill -9)")

RUNS = int(os.environ.get("COHORTSYNC_CRASH_RUNS", "50"))
PROFILES = 1200
AUDIENCE = "cio_cart_1h"


def project_yaml(destination: str) -> str:
    return (
        PROJECT_YAML
        + f"""\
segments:
  cart_1h: {{event: added_to_cart, within: 1h}}
audiences:
  {AUDIENCE}:
    segment: cart_1h
    holdout: {{percent: 20}}
    destinations: [{ADS}]
destinations:
{destination}"""
    )


class Receiver(ABC):
    """What receives the audience: its fake, its settings, what it holds in the end."""

    fake: FakeServer

    @abstractmethod
    def destination_yaml(self) -> str:
        """The `ads_audiences` entry of `destinations:`."""

    @abstractmethod
    def held(self) -> set[str]:
        """Keys of the members the receiver holds now."""

    @abstractmethod
    def desired(self, engine: Engine) -> set[str]:
        """Keys of the members it should hold."""

    def sent_twice(self) -> dict[int, set[str]]:
        """Changes the receiver saw under more than one batch id (where it can tell)."""
        return {}


class WebhookReceiver(Receiver):
    def __init__(self, fake: WebhookFake) -> None:
        self.fake: WebhookFake = fake

    def destination_yaml(self) -> str:
        return f'  {ADS}: {{type: webhook, url: "{self.fake.url}", secret: "{self.fake.secret}"}}\n'

    def held(self) -> set[str]:
        found: set[str] = set()
        for _, body in self.fake.applied:
            for change in body["data"]["changes"]:
                if change["operation"] == "add":
                    found.add(change["profile_id"])
                else:
                    found.discard(change["profile_id"])
        return found

    def desired(self, engine: Engine) -> set[str]:
        return {m.profile_id for m in engine.members(AUDIENCE)}

    def sent_twice(self) -> dict[int, set[str]]:
        batches_of: dict[int, set[str]] = {}
        for webhook_id, body in self.fake.applied:
            for change in body["data"]["changes"]:
                batches_of.setdefault(change["change_id"], set()).add(webhook_id)
        return {c: ids for c, ids in batches_of.items() if len(ids) > 1}


class GoogleReceiver(Receiver):
    def __init__(self, fake: GoogleDataManagerFake) -> None:
        self.platform = GooglePlatform(fake)
        self.fake: GoogleDataManagerFake = fake

    def destination_yaml(self) -> str:
        entries = self.platform.destinations_yaml()
        return entries[: entries.index(f"  {CONVERSIONS}:")]

    def held(self) -> set[str]:
        return self.platform.members(AUDIENCE)

    def desired(self, engine: Engine) -> set[str]:
        members = engine.members(AUDIENCE)
        return {hash_google("email", m.email) or "" for m in members if not m.holdout and m.email}


def sync_process(project: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cohortsync", "sync", "--project", str(project)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_at_random_point(
    process: subprocess.Popen[bytes], fake: FakeServer, rng: random.Random
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


@pytest.fixture(params=["webhook", "google"])
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    if request.param == "webhook":
        with WebhookFake().serving() as hook:
            yield WebhookReceiver(hook)
    else:
        with GoogleDataManagerFake().serving() as google:
            yield GoogleReceiver(google)


def test_kill_9_of_the_delivery_worker_loses_nothing_and_applies_nothing_twice(
    project_dir: Path, receiver: Receiver
) -> None:
    (project_dir / "cohortsync.yml").write_text(
        project_yaml(receiver.destination_yaml()), encoding="utf-8"
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
        outcome = kill_at_random_point(sync_process(project_dir), receiver.fake, rng)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    for _ in range(2):  # restart and drain
        finished = sync_process(project_dir)
        _, stderr = finished.communicate(timeout=120)
        assert finished.returncode == 0, stderr.decode()

    with Engine.open(project_dir) as engine:
        desired = receiver.desired(engine)
        pending = engine.store.query("SELECT count(*) FROM outbox")  # type: ignore[attr-defined]
    held = receiver.held()
    lost_exits = held - desired
    lost_entries = desired - held
    sent_twice = receiver.sent_twice()
    print(f"runs {RUNS}: {outcomes}; requests the receiver got: {len(receiver.fake.log)}")
    assert (
        outcomes.get("killed after a delivery", 0) + outcomes.get("killed by time", 0) >= RUNS // 2
    )
    assert pending == [(0,)]
    assert (len(lost_exits), len(lost_entries), len(sent_twice)) == (0, 0, 0)
    assert len(desired) > 0
