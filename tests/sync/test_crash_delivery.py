"""kill -9 of the delivery worker at random points, while profiles flap in and out of an audience.

After restart and drain, what each receiver holds equals the desired membership for every
profile (no lost entry or exit). The webhook receiver also shows no change was ever sent under
two batch ids (resends keep their id, and it applies an id once); the TikTok and Google Data
Manager fakes hold members as sets of hashed ids, so a resend there changes nothing by itself.
Each receiver is one `Target`, and the test runs once per target.
"""

from __future__ import annotations

import hashlib
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
from tests.fakes.tiktok import TiktokFake, tiktok_type
from tests.fakes.webhook import WebhookFake
from tests.sync.conftest import person, track
from tests.sync.platforms import GOOGLE_MATCH

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals (kill -9)")

RUNS = int(os.environ.get("COHORTSYNC_CRASH_RUNS", "16"))
"""Kills against the webhook, the reference receiver; each ad-platform fake takes a third as
many (the state machine under test is the same; their runs prove the platform's own answers
are acknowledged as the webhook's are). bench/ or COHORTSYNC_CRASH_RUNS runs more."""
PROFILES = 1200
AUDIENCE = "cio_cart_1h"


def project_yaml(destination: str) -> str:
    """The project, its audience flowing to `hook`, whose settings `destination` gives."""
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
  hook: {destination}
"""
    )


class Target(ABC):
    """A receiver the worker is killed while delivering to: its fake, its settings, and what
    it holds against what it should."""

    fake: FakeServer

    @abstractmethod
    def destination(self) -> str:
        """The `hook` destination's settings, as one line of YAML."""

    @abstractmethod
    def held(self) -> set[str]:
        """What the receiver holds now."""

    @abstractmethod
    def desired(self, engine: Engine) -> set[str]:
        """What it should hold, in the same terms."""

    def sent_twice(self) -> dict[int, set[str]]:
        """Changes seen under more than one batch id (where the receiver can tell)."""
        return {}


class WebhookTarget(Target):
    """The Standard Webhooks receiver: profile ids, holdout included, once per webhook id."""

    def __init__(self, fake: WebhookFake) -> None:
        self.fake = fake

    def destination(self) -> str:
        return f'{{type: webhook, url: "{self.fake.url}", secret: "{self.fake.secret}"}}'

    def held(self) -> set[str]:
        held: set[str] = set()
        for _, body in self.fake.applied:
            for change in body["data"]["changes"]:
                if change["operation"] == "add":
                    held.add(change["profile_id"])
                else:
                    held.discard(change["profile_id"])
        return held

    def desired(self, engine: Engine) -> set[str]:
        return {m.profile_id for m in engine.members(AUDIENCE)}

    def sent_twice(self) -> dict[int, set[str]]:
        batches_of: dict[int, set[str]] = {}
        for webhook_id, body in self.fake.applied:
            for change in body["data"]["changes"]:
                batches_of.setdefault(change["change_id"], set()).add(webhook_id)
        return {c: ids for c, ids in batches_of.items() if len(ids) > 1}


class TiktokTarget(Target):
    """The TikTok fake: hashed emails and phones of the members outside the holdout."""

    def __init__(self, fake: TiktokFake) -> None:
        self.fake = fake

    def destination(self) -> str:
        kind = tiktok_type("tiktok_audience")
        return (
            f'{{type: "{kind}", advertiser_id: "{self.fake.advertiser_id}", '
            f'access_token: {self.fake.token}, base_url: "{self.fake.base_url}"}}'
        )

    def held(self) -> set[str]:
        if AUDIENCE not in self.fake.audiences():
            return set()
        assert self.fake.audience_count(AUDIENCE) == 1
        emails = {f"email:{h}" for h in self.fake.members(AUDIENCE)}
        return emails | {f"phone:{h}" for h in self.fake.members(AUDIENCE, "PHONE_SHA256")}

    def desired(self, engine: Engine) -> set[str]:
        found: set[str] = set()
        for m in engine.members(AUDIENCE):
            if m.holdout:
                continue
            if m.email:
                found.add(f"email:{_sha(m.email)}")
            if m.phone:
                found.add(f"phone:{_sha(m.phone.lstrip('+'))}")
        return found


class GoogleTarget(Target):
    """The Google Data Manager fake: hashed emails of the members outside the holdout, in the
    Customer Match list named after the audience (OAuth, list lookup, ingest and remove)."""

    def __init__(self, fake: GoogleDataManagerFake) -> None:
        self.fake = fake

    def destination(self) -> str:
        fake = self.fake
        return (
            f'{{type: "{GOOGLE_MATCH}", operating_account_id: "{fake.account_id}", '
            f'refresh_token: "{fake.refresh_token}", client_id: "{fake.client_id}", '
            f'client_secret: "{fake.client_secret}", token_uri: "{fake.token_url}", '
            f'base_url: "{fake.base_url}", accept_terms_of_service: true}}'
        )

    def held(self) -> set[str]:
        if AUDIENCE not in self.fake.user_lists():
            return set()
        return self.fake.members(AUDIENCE)

    def desired(self, engine: Engine) -> set[str]:
        members = engine.members(AUDIENCE)
        return {hash_google("email", m.email) or "" for m in members if not m.holdout and m.email}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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


@pytest.fixture(params=["webhook", "tiktok_audience", "google_customer_match"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """Each receiver in turn, serving."""
    if request.param == "webhook":
        with WebhookFake().serving() as hook:
            yield WebhookTarget(hook)
    elif request.param == "google_customer_match":
        with GoogleDataManagerFake().serving() as google:
            yield GoogleTarget(google)
    else:
        with TiktokFake().serving() as tiktok:
            yield TiktokTarget(tiktok)


def test_kill_9_of_the_delivery_worker_loses_nothing_and_applies_nothing_twice(
    project_dir: Path, target: Target
) -> None:
    receiver = target.fake
    (project_dir / "cohortsync.yml").write_text(
        project_yaml(target.destination()), encoding="utf-8"
    )
    rng = random.Random(20261129)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    with Engine.open(project_dir) as engine:
        engine.ingest_messages([person(n, start - timedelta(hours=1)) for n in range(PROFILES)])
    runs = RUNS if isinstance(target, WebhookTarget) else max(1, RUNS // 3)
    outcomes: dict[str, int] = {}
    for run in range(runs):
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
        desired = target.desired(engine)
        pending = engine.store.query("SELECT count(*) FROM outbox")  # type: ignore[attr-defined]
    held = target.held()
    lost_exits = held - desired
    lost_entries = desired - held
    sent_twice = target.sent_twice()
    print(f"runs {runs}: {outcomes}; requests the receiver saw: {len(receiver.log)}")
    assert (
        outcomes.get("killed after a delivery", 0) + outcomes.get("killed by time", 0) >= runs // 2
    )
    assert pending == [(0,)]
    assert (len(lost_exits), len(lost_entries), len(sent_twice)) == (0, 0, 0)
    assert len(desired) > 0
