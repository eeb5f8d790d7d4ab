"""Rebuilding a whole list (what `sync --reconcile` sends) against the platforms' contract fakes:
more members than one request takes, a failure after the first request, and the resume that
finishes the same rebuild."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cohortsync.destinations.base import AnyDestination, Change, Rebuild, TransientError
from cohortsync.destinations.hashing import sha256_hex
from tests.destinations.conformance import CLOCK_AT, Records
from tests.destinations.google_subjects import customer_match
from tests.destinations.test_meta_custom_audience import destination as meta_destination
from tests.fakes.base import FakeServer
from tests.fakes.google_data_manager import GoogleDataManagerFake
from tests.fakes.meta import MetaFake

AUDIENCE = "cio_cart_abandon_6h"
MEMBERS = 10_001  # one more than a request takes, on both platforms
RECORDS = Records(start=CLOCK_AT)


def members() -> tuple[Change, ...]:
    return tuple(
        RECORDS.change(n, ids={"email": f"shopper.{n}@example.com"}, audience=AUDIENCE)
        for n in range(1, MEMBERS + 1)
    )


def emails() -> set[str]:
    return {sha256_hex(f"shopper.{n}@example.com") for n in range(1, MEMBERS + 1)}


def rebuild_twice(dest: AnyDestination, fake: FakeServer, path: str) -> list[int]:
    """Rebuild, failing the request after the first acknowledged one; then resume it."""
    acks: list[int] = []

    def acknowledged(done: int) -> None:
        acks.append(done)
        if done == 1:
            fake.fail(503, times=1, path=path)

    job = Rebuild(AUDIENCE, members(), "seed-1", 0, acknowledged)
    with pytest.raises(TransientError):
        dest.rebuild(job)
    assert acks == [1]
    resumed = Rebuild(AUDIENCE, job.members, "seed-1", acks[-1], acks.append)
    result = dest.rebuild(resumed)
    assert result.requests == result.total - 1
    return acks


def test_meta_resumes_the_same_replace_session(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    meta_fake.create_audience(AUDIENCE)
    meta_fake.seed_members(AUDIENCE, [{"EMAIL": sha256_hex("stray@elsewhere.example")}])
    dest = meta_destination(meta_fake, tmp_path, http)
    acks = rebuild_twice(dest, meta_fake, "/usersreplace")
    assert acks == [1, 2]
    assert meta_fake.members(AUDIENCE) == emails()
    replaced = [b for b in meta_fake.batches if b.op == "replace"]
    assert [b.batch_seq for b in replaced] == [1, 2]
    assert len({b.session_id for b in replaced}) == 1
    assert [len(b.rows) for b in replaced] == [10_000, 1]


def test_google_resumes_after_remove_all_without_sending_it_again(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    google_fake.create_user_list(AUDIENCE)
    google_fake.seed_members(AUDIENCE, [[f"email:{sha256_hex('stray@elsewhere.example')}"]])
    dest = customer_match(google_fake, tmp_path, http)
    acks = rebuild_twice(dest, google_fake, "/v1/audienceMembers:ingest")
    assert acks == [1, 2, 3]
    assert google_fake.members(AUDIENCE) == emails()
    assert len(google_fake.log.to("audienceMembers:removeAll")) == 1
    sizes = [len(c.json()["audienceMembers"]) for c in google_fake.log.to(":ingest") if not c.fault]
    assert sizes == [10_000, 1]
