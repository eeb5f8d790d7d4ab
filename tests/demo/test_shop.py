"""Behaviour of the deterministic synthetic D2C shop generator."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email

from cohortsync.demo.shop import CAMPAIGNS, SHOP_URL, SKUS, generate_shop

NOW = datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
PROFILES = 300
OWNED = {"email_delivered", "email_opened", "email_clicked", "sms_delivered"}

Message = dict[str, Any]


@pytest.fixture(scope="module")
def messages() -> list[Message]:
    return list(generate_shop(profiles=PROFILES, seed=7, now=NOW))


def _when(msg: Message) -> datetime:
    return datetime.fromisoformat(msg["timestamp"].replace("Z", "+00:00"))


def _links(messages: list[Message]) -> dict[str, str]:
    """anonymousId -> the first userId it was tied to (identify, alias or a message with both)."""
    links: dict[str, str] = {}
    for msg in messages:
        anon = msg.get("previousId") if msg["type"] == "alias" else msg.get("anonymousId")
        if anon and msg.get("userId"):
            links.setdefault(anon, msg["userId"])
    return links


def _person(msg: Message, links: dict[str, str]) -> str:
    return str(msg.get("userId") or links.get(msg["anonymousId"], msg["anonymousId"]))


def _by_person(messages: list[Message], event: str) -> dict[str, list[datetime]]:
    links, out = _links(messages), defaultdict(list)
    for msg in messages:
        if msg.get("event") == event:
            out[_person(msg, links)].append(_when(msg))
    return out


def _identify_traits(messages: list[Message]) -> dict[str, dict[str, Any]]:
    return {m["userId"]: m["traits"] for m in messages if m["type"] == "identify"}


def test_same_inputs_yield_identical_messages(messages: list[Message]) -> None:
    again = list(generate_shop(profiles=PROFILES, seed=7, now=NOW))
    assert json.dumps(again) == json.dumps(messages)


def test_different_seed_yields_different_messages(messages: list[Message]) -> None:
    other = list(generate_shop(profiles=PROFILES, seed=8, now=NOW))
    assert [m["timestamp"] for m in other] != [m["timestamp"] for m in messages]


def test_now_in_another_timezone_means_the_same_instant(messages: list[Message]) -> None:
    shifted = NOW.astimezone(timezone(timedelta(hours=2)))
    assert list(generate_shop(profiles=PROFILES, seed=7, now=shifted)) == messages


def test_default_now_keeps_timestamps_in_the_past() -> None:
    before = datetime.now(UTC)
    stamps = [_when(m) for m in generate_shop(profiles=20)]
    assert stamps
    assert max(stamps) <= datetime.now(UTC)
    assert min(stamps) > before - timedelta(days=180)


def test_every_message_is_a_valid_segment_message(messages: list[Message]) -> None:
    assert 20 * PROFILES <= len(messages) <= 40 * PROFILES
    ids = [m["messageId"] for m in messages]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("demo-7-20260601-") for i in ids)
    for msg in messages:
        assert msg["type"] in {"track", "identify", "page", "alias"}
        assert msg.get("userId") or msg.get("anonymousId")
        assert msg["timestamp"].endswith("Z")
        assert NOW - timedelta(days=180) < _when(msg) <= NOW
        if msg["type"] == "track":
            assert msg["event"] and isinstance(msg["properties"], dict)
        elif msg["type"] == "page":
            assert msg["name"] and msg["context"]["page"]["url"].startswith("https://")
        elif msg["type"] == "identify":
            assert isinstance(msg["traits"], dict)
        else:
            assert msg["previousId"] and msg["userId"]
    json.dumps(messages)


def test_each_persons_messages_come_in_time_order(messages: list[Message]) -> None:
    last_seen: dict[str, str] = {}
    for msg in messages:
        for key in (msg.get("userId"), msg.get("anonymousId")):
            if key:
                assert msg["timestamp"] >= last_seen.get(key, ""), key
                last_seen[key] = msg["timestamp"]


def test_funnel_narrows_from_views_to_orders(messages: list[Message]) -> None:
    counts = Counter(m.get("event") for m in messages)
    assert counts["product_viewed"] > counts["added_to_cart"] > counts["checkout_started"]
    assert counts["checkout_started"] >= counts["order_completed"] > 0
    sessions_with_page = Counter(m["name"] for m in messages if m["type"] == "page")
    assert {"Home", "Collection", "Product", "Checkout"} <= set(sessions_with_page)


def test_orders_have_revenue_products_and_coupons_when_discounted(
    messages: list[Message],
) -> None:
    orders = [m["properties"] for m in messages if m.get("event") == "order_completed"]
    known = {s.sku for s in SKUS}
    assert any(o["discount"] for o in orders) and not all(o["discount"] for o in orders)
    for order in orders:
        assert order["revenue"] > 0 and round(order["revenue"], 2) == order["revenue"]
        assert order["currency"] == "USD" and order["order_id"]
        assert order["products"] and {p["sku"] for p in order["products"]} <= known
        subtotal = sum(p["price"] * p["quantity"] for p in order["products"])
        assert order["revenue"] <= subtotal + 0.005
        assert ("coupon" in order) == order["discount"]
    assert len({o["order_id"] for o in orders}) == len(orders)


def test_recent_cart_abandoners_exist(messages: list[Message]) -> None:
    carts, orders = _by_person(messages, "added_to_cart"), _by_person(messages, "order_completed")
    abandoners = [
        person
        for person, times in carts.items()
        if any(
            NOW - timedelta(hours=6) <= t <= NOW - timedelta(hours=2)
            and not any(o > t for o in orders.get(person, []))
            for t in times
        )
    ]
    assert len(abandoners) >= 3


def test_lapsed_and_recent_buyers_exist(messages: list[Message]) -> None:
    last_order = {p: max(ts) for p, ts in _by_person(messages, "order_completed").items()}
    lapsed = [p for p, t in last_order.items() if timedelta(60) <= NOW - t <= timedelta(90)]
    recent = [p for p, t in last_order.items() if NOW - t <= timedelta(7)]
    assert len(lapsed) >= 5 and len(recent) >= 5


def test_replenishment_skus_are_rebought_around_their_cycle(messages: list[Message]) -> None:
    cycles = {s.sku: s.replenish_days for s in SKUS if s.replenish_days}
    bought: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for msg in messages:
        if msg.get("event") == "order_completed" and msg.get("userId"):
            for product in msg["properties"]["products"]:
                bought[msg["userId"], product["sku"]].append(_when(msg))
    on_cycle = 0
    for (_, sku), times in bought.items():
        if sku in cycles:
            gaps = [(b - a).days for a, b in itertools.pairwise(times)]
            on_cycle += sum(0.8 * cycles[sku] <= g <= 1.3 * cycles[sku] for g in gaps)
    assert on_cycle >= 20
    one_off = {s.sku for s in SKUS if s.replenish_days is None}
    assert any(sku in one_off for _, sku in bought)


def test_anonymous_visitors_are_identified_later(messages: list[Message]) -> None:
    first_anonymous: dict[str, str] = {}
    for msg in messages:
        anon = msg.get("anonymousId")
        if anon and not msg.get("userId"):
            first_anonymous.setdefault(anon, msg["timestamp"])
    identified_later = [
        m
        for m in messages
        if m["type"] == "identify"
        and m.get("anonymousId") in first_anonymous
        and first_anonymous[m["anonymousId"]] < m["timestamp"]
    ]
    assert len(identified_later) >= 30
    never = set(first_anonymous) - set(_links(messages))
    assert len(never) >= 10


def test_a_shared_device_is_identified_by_two_users(messages: list[Message]) -> None:
    users: dict[str, set[str]] = defaultdict(set)
    for msg in messages:
        if msg["type"] == "identify" and msg.get("anonymousId"):
            users[msg["anonymousId"]].add(msg["userId"])
    assert any(len(u) == 2 for u in users.values())


def test_alias_links_an_earlier_anonymous_id(messages: list[Message]) -> None:
    aliases = [m for m in messages if m["type"] == "alias"]
    assert aliases
    seen = {m["anonymousId"]: m["timestamp"] for m in reversed(messages) if m.get("anonymousId")}
    assert all(seen.get(a["previousId"], "~") < a["timestamp"] for a in aliases)


def test_guest_checkouts_carry_email_in_context_traits(messages: list[Message]) -> None:
    guest_orders = [
        m for m in messages if m.get("event") == "order_completed" and not m.get("userId")
    ]
    assert guest_orders
    assert all(m["anonymousId"] and "traits" in m["context"] for m in guest_orders)
    assert any("email" in m["context"]["traits"] for m in guest_orders)


def test_emails_are_unique_per_person_with_messy_and_invalid_ones(
    messages: list[Message],
) -> None:
    owners: dict[str, set[str]] = defaultdict(set)
    messy = invalid = 0
    for user, traits in _identify_traits(messages).items():
        raw = traits.get("email")
        if raw is None:
            continue
        try:
            email = validate_email(raw.strip().lower(), check_deliverability=False).normalized
        except EmailNotValidError:
            invalid += 1
            continue
        owners[email].add(user)
        messy += raw != email
    assert owners and all(len(users) == 1 for users in owners.values())
    assert messy >= 10 and invalid >= 2


def test_phones_are_valid_us_numbers_unique_per_person_in_mixed_formats(
    messages: list[Message],
) -> None:
    owners: dict[str, set[str]] = defaultdict(set)
    raws, invalid = [], 0
    for user, traits in _identify_traits(messages).items():
        raw = traits.get("phone")
        if raw is None:
            continue
        try:
            number = phonenumbers.parse(raw, "US")
            valid = phonenumbers.is_valid_number(number)
        except phonenumbers.NumberParseException:
            valid = False
        if not valid:
            invalid += 1
            continue
        raws.append(raw)
        owners[phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)].add(user)
    assert len(owners) >= 50 and all(len(users) == 1 for users in owners.values())
    assert invalid >= 1
    assert any("(" in r for r in raws) and any("." in r for r in raws)
    assert any(r.startswith("+1") for r in raws) and any(r.isdigit() for r in raws)


def test_identify_traits_describe_the_person(messages: list[Message]) -> None:
    for traits in _identify_traits(messages).values():
        assert traits["first_name"] and traits["last_name"]
        assert isinstance(traits["accepts_marketing"], bool)
        datetime.fromisoformat(traits["created_at"].replace("Z", "+00:00"))


def test_owned_messages_carry_their_campaign(messages: list[Message]) -> None:
    campaigns = {c.campaign_id: c for c in CAMPAIGNS}
    owned = [m for m in messages if m.get("event") in OWNED]
    for msg in owned:
        campaign = campaigns[msg["properties"]["campaign_id"]]
        assert msg["properties"]["campaign_name"] == campaign.name
        assert msg["properties"]["channel"] == campaign.channel
        assert msg["userId"]
    names = Counter(m["properties"]["campaign_name"] for m in owned)
    assert names["cart_recovery_1"] > 0 and names["weekly_newsletter"] > 0
    assert {m["event"] for m in owned} == OWNED


def test_some_email_recipients_order_within_a_day_and_most_do_not(
    messages: list[Message],
) -> None:
    orders = _by_person(messages, "order_completed")
    converted = not_converted = 0
    for msg in messages:
        if msg.get("event") == "email_delivered":
            sent = _when(msg)
            if any(sent < o <= sent + timedelta(hours=24) for o in orders.get(msg["userId"], [])):
                converted += 1
            else:
                not_converted += 1
    assert converted >= 5 and not_converted > 10 * converted


def test_subscriptions_refunds_and_support_escalations_occur(messages: list[Message]) -> None:
    by_event: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for msg in messages:
        if msg["type"] == "track":
            by_event[msg["event"]].append(msg["properties"])
    assert all(p["plan"] and p["price"] > 0 for p in by_event["subscription_started"])
    assert by_event["subscription_started"] and by_event["subscription_cancelled"]
    order_ids = {p["order_id"] for p in by_event["order_completed"]}
    assert by_event["order_refunded"] and by_event["support_escalated"]
    assert all(p["order_id"] in order_ids and p["revenue"] > 0 for p in by_event["order_refunded"])
    assert all(p["reason"] and p["channel"] for p in by_event["support_escalated"])


def test_catalogue_mixes_replenishable_and_one_off_skus() -> None:
    assert 10 <= len(SKUS) <= 15 and len({s.sku for s in SKUS}) == len(SKUS)
    cycles = {s.name: s.replenish_days for s in SKUS}
    assert any(cycles.values()) and None in cycles.values()
    assert all(s.price > 0 for s in SKUS)


def test_orders_placed_on_the_site_carry_the_browser_they_came_from(
    messages: list[Message],
) -> None:
    links, checkout = _links(messages), {}
    orders = [m for m in messages if m.get("event") == "order_completed"]
    web = [m for m in orders if "userAgent" in m.get("context", {})]
    assert len(web) >= 0.9 * len(orders)  # the rest: subscription renewals, placed by the shop
    for msg in messages:
        context, event = msg.get("context", {}), msg.get("event")
        if event == "checkout_started":
            checkout[_person(msg, links)] = (context["ip"], context["userAgent"])
        elif event == "order_completed" and "userAgent" in context:
            url = context["page"]["url"]
            assert url.startswith(SHOP_URL + "/") and "?" not in url  # no PII in a query
            assert checkout[_person(msg, links)] == (context["ip"], context["userAgent"])
