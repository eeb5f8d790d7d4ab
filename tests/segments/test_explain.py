"""Golden plain-English explanations of segments and audiences."""

from __future__ import annotations

import pytest
from ruamel.yaml import YAML

from cohortsync.segments.ast import SegmentProject
from cohortsync.segments.explain import explain_audience, explain_segment
from cohortsync.segments.parser import parse_document

PROJECT = """\
traits:
  lifetime_value: {event: Order Completed, sum: revenue}
  orders_90d: {event: order_completed, count: true, within: 90d}
segments:
  cart_abandon:
    description: Added to cart, no order since
    all:
      - {event: added_to_cart, within: 6h}
      - not: {event: order_completed, since: added_to_cart}
  lapsed:
    all:
      - {event: order_completed, between: [90d, 60d]}
      - not: {event: order_completed, within: 60d}
      - any:
          - {event: email_opened, within: 14d}
          - {event: session_started, within: 14d}
  replenish:
    all:
      - {event: order_completed, where: {product_type: consumable}, between: [35d, 21d]}
      - not: {event: order_completed, within: 21d}
  high_ltv: {trait: lifetime_value, gte: 500}
  frequent: {trait: orders_90d, gt: 2}
  vip:
    any:
      - {segment: high_ltv}
      - {trait: plan, in: [gold, platinum]}
  browsers:
    all:
      - {has: email}
      - {event: product_viewed, count: {gte: 3}, within: 7d}
      - not: {event: order_completed}
      - not: {any: [{segment: vip}, {trait: country, eq: FR}]}
  ever_bought: {event: order_completed}
  coupon_fans: {event: coupon_applied, where: {code: {exists: true}}, before: 2w}
  nonconverter:
    all:
      - {event: email_delivered, where: {campaign_id: cart_1}, between: [7d, 24h]}
      - not: {event: email_delivered, where: {campaign_id: cart_1}, within: 24h}
      - event: order_completed
        after: {event: email_delivered, where: {campaign_id: cart_1}}
        within: 24h
        count: {eq: 0}
  opened_after: {event: email_opened, after: {event: email_delivered, where: {campaign_id: c2}}}
  subscribed:
    event: subscription_cancelled
    since: subscription_started
    count: {eq: 0}
audiences:
  win_back:
    segment: lapsed
    exclude: [vip]
    holdout: {percent: 10}
    refresh: realtime
    identifiers: [email]
    destinations: [meta_ads]
    owner: crm
"""


@pytest.fixture(scope="module")
def project() -> SegmentProject:
    """The parsed example project."""
    return parse_document(YAML(typ="rt").load(PROJECT), "cohortsync.yml")


GOLDEN = {
    "cart_abandon": "Enters when it added to cart within the last 6 hours and has not ordered "
    "since its latest add to cart. Leaves when it orders, or 6 hours after its latest add to "
    "cart.",
    "lapsed": "Enters when it ordered between 90 and 60 days ago, has not ordered within the "
    "last 60 days and either opened an email within the last 14 days or visited within the last "
    "14 days. Leaves when it orders, or when it has not opened an email within the last 14 days "
    "and has not visited within the last 14 days, or when it has no order from between 90 and "
    "60 days ago any more.",
    "replenish": 'Enters when it ordered with product type "consumable" between 35 and 21 days '
    "ago and has not ordered within the last 21 days. Leaves when it orders, or when it has no "
    'order with product type "consumable" from between 35 and 21 days ago any more.',
    "high_ltv": "Enters when its lifetime value is at least 500. Leaves when its lifetime value "
    "is no longer at least 500. Lifetime value is the sum of revenue over its orders ever.",
    "frequent": "Enters when its orders 90d is more than 2. Leaves when its orders 90d is no "
    "longer more than 2. Orders 90d is the number of its orders within the last 90 days.",
    "vip": 'Enters when either it is in high_ltv or its plan is one of "gold" or "platinum". '
    'Leaves when it is not in high_ltv and its plan is not one of "gold" or "platinum".',
    "browsers": "Enters when it has an email, it viewed a product at least 3 times within the "
    'last 7 days, it has not ordered and both it is not in vip and its country is not "FR". '
    "Leaves when it has no email, or when it has not viewed a product at least 3 times within "
    'the last 7 days, or when it orders, or when it enters vip, or when its country is "FR".',
    "ever_bought": "Enters when it has ordered. Never leaves once it has entered.",
    "coupon_fans": "Enters when it applied a coupon with code set more than 2 weeks ago. "
    "Never leaves once it has entered.",
    "nonconverter": 'Enters when it received an email with campaign id "cart_1" between 7 days '
    'and 24 hours ago, has not received an email with campaign id "cart_1" within the last 24 '
    "hours and has not ordered within 24 hours after its latest email delivery with campaign id "
    '"cart_1". Leaves when it receives an email with campaign id "cart_1", or when it orders '
    'within 24 hours after its latest email delivery with campaign id "cart_1", or when it has '
    'no email delivery with campaign id "cart_1" from between 7 days and 24 hours ago any more.',
    "opened_after": "Enters when it opened an email after its latest email delivery with "
    'campaign id "c2". Leaves when it receives an email with campaign id "c2" again.',
    "subscribed": "Enters when it has not cancelled a subscription since its latest "
    "subscription started event. Leaves when it cancels a subscription.",
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_segment_golden(project: SegmentProject, name: str) -> None:
    assert explain_segment(project.segments[name], project) == GOLDEN[name]


def test_audience_golden(project: SegmentProject) -> None:
    assert explain_audience(project.audiences["win_back"], project) == "\n".join(
        [
            "Audience win_back: everyone in lapsed, except anyone in vip.",
            f"lapsed: {GOLDEN['lapsed']}",
            "Also leaves when it enters vip.",
            "Holdout: 10% of members are held back as a control group and never sent.",
            "Refreshed in real time, as events arrive.",
            "Sends identifiers: email.",
            "Synced to: meta_ads.",
            "Owner: crm.",
        ]
    )


def test_where_counts_and_negated_groups() -> None:
    text = """\
segments:
  a:
    not:
      all:
        - {event: checkout_started, where: {total: {gte: 10, lt: 100}}, count: {eq: 2}}
        - {trait: name, contains: bob}
  b:
    any:
      - {all: [{has: phone}, {event: quiz_taken, within: 1w}]}
      - {event: signed_up, count: {eq: 0}}
"""
    project = parse_document(YAML(typ="rt").load(text), "cohortsync.yml")
    assert explain_segment(project.segments["a"], project) == (
        "Enters when either it has not started checkout with total at least 10 and total below 100 "
        'exactly twice or its name does not contain "bob". Leaves when it has started checkout '
        'with total at least 10 and total below 100 exactly twice and its name contains "bob".'
    )
    assert explain_segment(project.segments["b"], project).startswith(
        "Enters when it either both has a phone and had a quiz taken event within the last 1 week "
        "or has signed up zero times."
    )
