"""What ingest tells the real-time loop: per stored message, the profiles it touched.

The loop evaluates these profiles instead of looking the messages' identifiers up again, so
they must be the survivors of the batch's merges, and include a profile an identify's email
names when the email limit keeps it apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cohortsync.engine import Engine
from cohortsync.events.pipeline import IngestResult
from cohortsync.store.records import Message


class Heard:
    """A listener keeping what every commit handed over."""

    def __init__(self) -> None:
        self.profiles: dict[str, tuple[str, ...]] = {}
        self.merged: set[str] = set()

    def __call__(self, messages: Sequence[Message], stored: IngestResult) -> None:
        self.profiles.update(stored.profiles)
        self.merged |= stored.merged


def msg(message_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": message_id, "timestamp": "2026-04-01T09:00:00Z", **fields}


def test_each_stored_message_names_the_survivors_of_its_batch(project_dir: Path) -> None:
    with Engine.open(project_dir) as engine:
        heard = Heard()
        engine.on_stored(heard)
        engine.ingest_messages([msg("a0", "identify", userId="u1", traits={"email": "a@x.com"})])
        u1 = engine.store.find_profile("user_id", "u1")
        # A visitor browses anonymously, then logs in as u1 in the same batch: the anonymous
        # profile made for the view is merged into u1's, and both messages name the survivor.
        engine.ingest_messages(
            [
                msg("a1", "track", anonymousId="anon-1", event="Product Viewed"),
                msg("a2", "identify", anonymousId="anon-1", userId="u1"),
            ]
        )
        assert engine.store.find_profile("anonymous_id", "anon-1") == u1
        assert heard.profiles["a1"] == (u1,) and heard.profiles["a2"] == (u1,)
        assert heard.merged == {u1}  # the survivor is evaluated whatever message merged it

        # A second visitor on the shared device identifies with another email and no user id:
        # the email limit keeps it in a profile of its own, which the message touched too.
        engine.ingest_messages(
            [msg("a3", "identify", anonymousId="anon-1", traits={"email": "b@x.com"})]
        )
        other = engine.store.find_profile("email", "b@x.com")
        assert other is not None and other != u1
        assert set(heard.profiles["a3"]) == {u1, other}


def test_nothing_is_computed_without_a_listener(project_dir: Path) -> None:
    with Engine.open(project_dir) as engine:
        result = engine.ingest_messages([msg("b1", "track", userId="u9", event="Added To Cart")])
        assert result.stored == 1 and result.profiles == {}
