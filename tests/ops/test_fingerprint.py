"""The fingerprint in cohortsync.lock changes with the logic, and only with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohortsync.config.loader import parse_project, parse_segments
from cohortsync.ops.fingerprint import Fingerprint, fingerprint
from tests.conftest import PROJECT_YAML
from tests.ops.conftest import DESTINATIONS_YAML, LOCK_YAML


def printed(audiences: str, name: str = "cio_cart_7d") -> Fingerprint:
    text = PROJECT_YAML + audiences + DESTINATIONS_YAML
    project = parse_segments(parse_project(text, Path("cohortsync.yml")))
    return fingerprint(project.audiences[name], project)


REWRITTEN = """\
# the same logic, written another way: block style, other key order, other lines, comments,
# and every key that is not logic changed
traits:

  ltv:
    sum: revenue
    event: order_completed
segments:
  big_spender:
    gte: 100
    trait: ltv
  recent_buyer_3d:
    description: Ordered in the last three days.
    within: 72h
    event: order_completed
  carted_7d:
    within: 1w
    event: added_to_cart
audiences:
  cio_unsynced: {segment: carted_7d}
  cio_big_spenders: {segment: big_spender, destinations: [warehouse]}
  cio_cart_7d:
    owner: someone.else@shop.example
    description: Reworded.
    refresh: 15m
    exits: realtime
    offer: free_shipping
    destinations: [warehouse]
    identifiers: [email]
    holdout: {percent: 20}
    exclude: [recent_buyer_3d]
    segment: carted_7d
"""


def test_formatting_positions_and_descriptive_keys_leave_the_fingerprint_alone() -> None:
    assert printed(REWRITTEN) == printed(LOCK_YAML)


@pytest.mark.parametrize(
    ("old", "new", "part", "audience"),
    [
        ("carted_7d: {event: added_to_cart, within: 7d}",
         "carted_7d: {event: added_to_cart, within: 6d}", "segment", "cio_cart_7d"),
        # a computed trait the segment reads is written out in place
        ("ltv: {event: order_completed, sum: revenue}",
         "ltv: {event: order_completed, max: revenue}", "segment", "cio_big_spenders"),
        ("exclude: [recent_buyer_3d]", "exclude: [recent_buyer_3d, big_spender]", "exclusions",
         "cio_cart_7d"),
        # so is an excluded segment's tree
        ("recent_buyer_3d: {event: order_completed, within: 3d}",
         "recent_buyer_3d: {event: order_completed, within: 4d}", "exclusions", "cio_cart_7d"),
        ("holdout: {percent: 20}", "holdout: {percent: 25}", "holdout", "cio_cart_7d"),
        ("identifiers: [email]", "identifiers: [email, phone]", "identifiers", "cio_cart_7d"),
    ],
)  # fmt: skip
def test_each_part_of_the_logic_changes_the_fingerprint(
    old: str, new: str, part: str, audience: str
) -> None:
    before = printed(LOCK_YAML, audience)
    assert old in LOCK_YAML
    after = printed(LOCK_YAML.replace(old, new, 1), audience)
    assert after.value != before.value
    assert after.changed_parts(before.parts) == [part]


def test_a_referenced_segment_is_inlined() -> None:
    nested = LOCK_YAML.replace(
        "carted_7d: {event: added_to_cart, within: 7d}",
        "carted_7d: {segment: inner}\n  inner: {event: added_to_cart, within: 7d}",
    )
    changed = nested.replace(
        "inner: {event: added_to_cart, within: 7d}", "inner: {event: added_to_cart, within: 5d}"
    )
    assert printed(changed).changed_parts(printed(nested).parts) == ["segment"]
