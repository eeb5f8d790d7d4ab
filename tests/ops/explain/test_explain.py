"""`Engine.explain_profile` on a small shop: in, out by exclusion, held out, the window that
closes next, the events that decided each leaf, and what each destination holds after a sync."""

from __future__ import annotations

from typing import Any

import pytest

from cohortsync.engine import Engine, explanation_json
from cohortsync.errors import InputError
from cohortsync.ops.explain import mask
from cohortsync.segments.ast import Comparison, SegmentProject, TraitCondition
from cohortsync.segments.evaluate import ProfileHistory
from cohortsync.segments.trace import trace
from tests.audiences.conftest import H, T, stamp

CART = "cio_cart_6h"


def why(shop: Engine, who: str, audience: str | None = CART) -> dict[str, Any]:
    """The JSON explanation of one audience (or every one) for `user_id:who` as of T."""
    return explanation_json(shop.explain_profile(f"user_id:{who}", audience, T))


def only(shown: dict[str, Any]) -> dict[str, Any]:
    (one,) = shown["audiences"]
    return one


def leaves(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every leaf of a trace, depth first."""
    kids = node.get("children", [])
    return [node] if not kids else [leaf for kid in kids for leaf in leaves(kid)]


def held_and_sent(shop: Engine) -> tuple[str, str]:
    """A cart member the compute held out, and one it did not (by the batch path's flags)."""
    flags = {m.user_id: m.holdout for m in shop.members(CART)}
    held = sorted(u for u, h in flags.items() if h and u and u.startswith("c"))
    sent = sorted(u for u, h in flags.items() if not h and u and u.startswith("c"))
    assert held and sent, flags  # 8 carters at 50%: both groups exist
    return held[0], sent[0]


def test_a_member_is_in_with_the_cart_add_that_put_it_there(shop: Engine) -> None:
    _, member = held_and_sent(shop)
    one = only(why(shop, member))
    assert (one["status"], one["reason"]) == (
        "in",
        "in: in segment cart_6h and in none of its exclusions",
    )
    assert one["trace"]["truth"] is True
    cart = next(x for x in leaves(one["trace"]) if x.get("name") == "added_to_cart")
    assert (cart["truth"], cart["count"], cart["compared"]) == (True, 1, "gte 1")
    assert [e["timestamp"] for e in cart["events"]] == [stamp(T - H)]
    assert cart["events"][0]["event"] == "added_to_cart"
    since = next(x for x in leaves(one["trace"]) if x.get("since") == "added_to_cart")
    assert (since["truth"], since["count"], since["events"]) == (False, 0, [])  # under `not:`
    assert since["reference"]["timestamp"] == stamp(T - H)  # no order since this cart add
    assert one["recorded"] == {"member": True, "since": stamp(T), "holdout": False}


def test_an_excluded_profile_is_out_and_names_the_exclusion(shop: Engine) -> None:
    one = only(why(shop, "cy"))
    assert one["status"] == "out"
    assert one["reason"] == "out: removed by exclusion bought_7d"
    assert one["excluded_by"] == ["bought_7d"]
    order = next(x for x in leaves(one["trace"]) if x.get("name") == "order_completed"
                 and "7 days" in x["text"])  # fmt: skip
    assert order["truth"] is True
    assert [e["timestamp"] for e in order["events"]] == [stamp(T - 72 * H)]
    staff = only(why(shop, "dee"))
    assert staff["reason"] == "out: removed by exclusion staff"
    role = next(x for x in leaves(staff["trace"]) if x["kind"] == "trait")
    assert (role["name"], role["value"], role["truth"]) == ("role", "staff", True)


def test_a_profile_outside_the_segment_is_out_because_of_it(shop: Engine) -> None:
    one = only(why(shop, "eve"))
    assert (one["status"], one["reason"]) == ("out", "out: not in segment cart_6h")
    assert one["recorded"]["member"] is False
    vip = only(why(shop, "eve", "cio_vip"))
    ltv = next(x for x in leaves(vip["trace"]) if x["kind"] == "trait")
    assert (vip["status"], ltv["value"], ltv["computed"]) == ("in", 150, True)


def test_a_held_out_member_is_flagged_and_never_sent_to_the_ad_platform(shop: Engine) -> None:
    held, _ = held_and_sent(shop)
    shop.sync()
    one = only(why(shop, held))
    assert one["status"] == "held_out"
    assert one["reason"] == "held out (50%): in the audience, flagged, not sent to ad platforms"
    where = {d["destination"]: d for d in one["downstream"]}
    assert where["meta_ads"]["status"] == "not sent: holdout"
    assert where["meta_ads"]["last_delivery"] is None
    assert (where["warehouse"]["status"], where["warehouse"]["holds"]) == ("added", True)
    assert "flagged holdout" in where["warehouse"]["detail"]


def test_the_window_that_closes_next_gives_the_exact_instant_and_the_event(shop: Engine) -> None:
    one = only(why(shop, "bob"))
    assert one["status"] in ("in", "held_out")
    flip = one["next_change"]
    assert (flip["at"], flip["becomes"]) == (stamp(T + H), "out")
    add = stamp(T - 5 * H)
    assert flip["why"] == [
        f"the added_to_cart of {add} leaves the window of “it added to cart within the last "
        "6 hours”"
    ]
    assert flip["summary"].startswith(f"leaves at {stamp(T + H)}: the added_to_cart of {add}")
    assert only(why(shop, "eve"))["next_change"] is None  # no cart add: nothing will age out


def test_as_of_an_instant_only_earlier_events_count(shop: Engine) -> None:
    shown = why(shop, "late")
    assert (shown["past"], shown["events"]) == (True, 0)
    assert only(shown)["status"] == "out"
    later = explanation_json(shop.explain_profile("user_id:late", CART, T + 2 * H))
    assert later["events"] == 1 and only(later)["status"] in ("in", "held_out")


def test_after_a_sync_each_destination_says_what_it_holds(shop: Engine) -> None:
    _, member = held_and_sent(shop)
    before = {d["destination"]: d for d in only(why(shop, member))["downstream"]}
    assert {d["status"] for d in before.values()} == {"pending add"}
    shop.sync()
    after = {d["destination"]: d for d in only(why(shop, member))["downstream"]}
    warehouse, meta = after["warehouse"], after["meta_ads"]
    assert (warehouse["status"], warehouse["holds"]) == ("added", True)
    assert warehouse["last_delivery"]["outcome"] == "acknowledged"
    assert warehouse["last_delivery"]["op"] == "add"
    assert (meta["status"], meta["holds"], meta["dry_run"]) == ("dry run", False, True)
    assert meta["last_delivery"]["outcome"] == "dry_run"
    excluded = {d["destination"]: d for d in only(why(shop, "cy"))["downstream"]}
    assert {d["status"] for d in excluded.values()} == {"not sent (not a member)"}


def test_a_member_without_the_identifier_the_platform_matches_is_refused(shop: Engine) -> None:
    sent = sorted(m.user_id or "" for m in shop.members(CART) if m.email is None and not m.holdout)
    assert sent  # four shoppers without email at 50%: one is sent
    shop.sync()
    meta = {d["destination"]: d for d in only(why(shop, sent[0]))["downstream"]}["meta_ads"]
    assert meta["status"] == "rejected"
    assert "no email" in meta["detail"]


def test_every_audience_is_explained_and_an_unknown_one_is_refused(shop: Engine) -> None:
    shown = why(shop, "c0", None)
    assert [a["audience"] for a in shown["audiences"]] == ["cio_cart_6h", "cio_vip"]
    with pytest.raises(
        InputError, match=r"no audience named 'cio_cart6h': did you mean cio_cart_6h\?"
    ):
        shop.explain_profile("user_id:c0", "cio_cart6h", T)
    with pytest.raises(InputError, match="'cart_6h' is a segment, not an audience"):
        shop.explain_profile("user_id:c0", "cart_6h", T)


def test_profile_lists_current_memberships(shop: Engine) -> None:
    held, _ = held_and_sent(shop)
    found = shop.profile_memberships(shop.find_profile(f"user_id:{held}").profile_id)
    mine = [(m.kind, m.name, m.holdout) for m in found if m.kind == "audience"]
    assert mine == [("audience", CART, True)]
    eve = shop.profile_memberships(shop.find_profile("user_id:eve").profile_id)
    assert [(m.name, m.holdout) for m in eve if m.kind == "audience"] == [("cio_vip", False)]
    assert all(m.entered_at_us for m in eve)


def test_both_stores_give_the_recorded_membership_and_downstream_state(
    shop_on_both: Engine,
) -> None:
    shop = shop_on_both
    held, member = held_and_sent(shop)
    shop.sync()
    one = only(why(shop, member))
    assert one["recorded"] == {"member": True, "since": stamp(T), "holdout": False}
    where = {d["destination"]: d["status"] for d in one["downstream"]}
    assert where == {"warehouse": "added", "meta_ads": "dry run"}
    flagged = only(why(shop, held))
    assert {d["destination"]: d["status"] for d in flagged["downstream"]} == {
        "warehouse": "added",
        "meta_ads": "not sent: holdout",
    }
    eve = shop.profile_memberships(shop.find_profile("user_id:eve").profile_id)
    assert [(m.kind, m.name) for m in eve] == [
        ("audience", "cio_vip"),
        ("segment", "bought_7d"),
        ("segment", "vip"),
    ]


def test_now_is_not_a_past_instant(shop: Engine) -> None:
    shown = explanation_json(shop.explain_profile("user_id:bob", CART))
    assert (shown["past"], shown["events"]) == (False, 1)
    assert only(shown)["status"] == "out"  # the cart add of T - 5h is long out of its window


def test_a_trait_holding_an_email_is_shown_masked() -> None:
    condition = TraitCondition(Comparison("contact", "contains", "@"))
    history = ProfileHistory("p1", traits={"contact": "Ann <ann@example.com>"})
    node = trace(condition, history, 0, SegmentProject({}, {}, {}), mask)
    assert (node.truth, node.value) == (True, "Ann <<email>>")
