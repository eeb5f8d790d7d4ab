"""A retired audience has no members on the real-time path either: the rule both evaluators
read never holds, so a member leaves on its next evaluation, not only at the next compute."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cohortsync.audiences.rule import audience_members
from cohortsync.config.loader import parse_project, parse_segments
from cohortsync.segments.evaluate import EventRecord, ProfileHistory, evaluate
from tests.conftest import PROJECT_YAML
from tests.ops.conftest import DESTINATIONS_YAML, LOCK_YAML, T


def test_a_retired_audience_rule_never_holds() -> None:
    text = PROJECT_YAML + LOCK_YAML + DESTINATIONS_YAML
    project = parse_segments(parse_project(text, Path("cohortsync.yml")))
    live = project.audiences["cio_unsynced"]
    retired = replace(live, retired=True)
    at = int(T.timestamp() * 1_000_000)
    history = ProfileHistory("p1", (EventRecord("m1", "added_to_cart", at - 1_000_000, {}),))
    assert evaluate(live.condition, history, at, project)
    assert not evaluate(retired.condition, history, at, project)
    assert audience_members(live, {"carted_7d": ["p1"]}) == [("p1", False)]
    assert audience_members(retired, {"carted_7d": ["p1"]}) == []
