"""An audience's one rule: its segment minus its exclusions, holdout flagged, on every path."""

from __future__ import annotations

from cohortsync.audiences.holdout import in_holdout
from cohortsync.audiences.rule import audience_members
from cohortsync.segments.ast import All, Audience, Not, SegmentRef

AUDIENCE = Audience(
    name="cio_cart_abandon_6h",
    segment="cart_abandon_6h",
    exclude=("recent_purch_7d", "unsubscribed"),
    holdout_percent=30,
)
SEGMENTS = {
    "cart_abandon_6h": [f"p{i}" for i in range(200)],
    "recent_purch_7d": ["p3", "p4", "p500"],
    "unsubscribed": ["p7"],
}


def test_the_rule_is_the_segment_minus_each_exclusion() -> None:
    assert AUDIENCE.condition == All(
        (
            SegmentRef("cart_abandon_6h"),
            Not(SegmentRef("recent_purch_7d")),
            Not(SegmentRef("unsubscribed")),
        )
    )


def test_batch_members_leave_out_excluded_profiles_and_flag_the_holdout() -> None:
    found = audience_members(AUDIENCE, SEGMENTS)
    ids = [p for p, _ in found]
    assert ids == [p for p in SEGMENTS["cart_abandon_6h"] if p not in {"p3", "p4", "p7"}]
    assert all(held == in_holdout(AUDIENCE.name, p, 30) for p, held in found)
    assert 0 < sum(held for _, held in found) < len(found)


def test_one_profile_alone_gets_what_batch_gives_it() -> None:
    """Real time asks about one profile, with only the segments it is inside."""
    batch = dict(audience_members(AUDIENCE, SEGMENTS))
    for profile in ("p1", "p3", "p7", "p150", "p500"):
        inside = {name: (profile,) for name, ids in SEGMENTS.items() if profile in ids}
        alone = dict(audience_members(AUDIENCE, inside))
        assert alone == ({profile: batch[profile]} if profile in batch else {})


def test_a_segment_with_no_members_leaves_the_audience_empty_or_unexcluded() -> None:
    assert audience_members(AUDIENCE, {}) == []
    only_segment = audience_members(AUDIENCE, {"cart_abandon_6h": ["p3"]})
    assert [p for p, _ in only_segment] == ["p3"]
