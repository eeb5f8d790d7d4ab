"""A project that commits each lint mistake once, and the shoppers that make it measurable.

Every audience but one goes wrong in exactly one way (`aud_small` is both under Meta's minimum
and renamed on the platform); the groups of profiles are sized so that no other rule fires:
each ad audience sends at least 100 matchable members, coverage and overlaps stay clear of
the thresholds except where a mistake needs them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import PROJECT_YAML

META_ACCOUNT = "1234567890"


def mistakes_yaml(meta_url: str, meta_token: str, store: str | None = None) -> str:
    """The project file; `meta_live` points at the Meta fake."""
    head = PROJECT_YAML
    if store is not None:
        head = head.replace("store: .cohortsync/store.duckdb", f"store: {store}")
    return (
        head
        + f"""\
segments:
  buyers_7d: {{event: order_completed, within: 7d}}
  carted: {{event: added_to_cart, within: 1d}}
  viewed: {{event: product_viewed, within: 1d}}
  hold: {{event: g_hold}}
  blind: {{event: g_blind}}
  idmis: {{event: g_idmis}}
  lowcov: {{event: g_lowcov}}
  anon: {{event: g_anon}}
  small: {{event: g_small}}
  offer_a: {{event: g_offer_a}}
  offer_b: {{event: g_offer_b}}
  dup: {{event: g_dup}}
  dup_emailed:
    all: [{{segment: dup}}, {{has: email}}]
  undoc: {{event: g_undoc}}
audiences:
  aud_retarget:            # CS101: intent, no purchase suppression
    segment: carted
    refresh: realtime
    identifiers: [email]
    destinations: [ads]
    owner: paid@shop.example
    description: Carted in the last day.
  aud_slow_suppress:       # CS102: buyers excluded only on the hourly refresh
    segment: viewed
    exclude: [buyers_7d]
    refresh: 1h
    identifiers: [email]
    destinations: [ads]
    owner: paid@shop.example
    description: Viewed in the last day, no order in 7 days.
  aud_hold:                # CS105: its holdout reaches ads through aud_retarget
    segment: hold
    holdout: {{percent: 50}}
    identifiers: [email]
    destinations: [ads, warehouse]
    owner: paid@shop.example
    description: The hold group.
  aud_blind:               # CS106: holdout but only ad platforms
    segment: blind
    holdout: {{percent: 10}}
    identifiers: [email]
    destinations: [ads]
    owner: paid@shop.example
    description: The blind group.
  aud_idmis:               # CS107: Meta files matched on user ids only
    segment: idmis
    identifiers: [user_id]
    destinations: [ads]
    owner: paid@shop.example
    description: The idmis group.
  aud_lowcov:              # CS108: 70% of members have an email
    segment: lowcov
    identifiers: [email, phone]
    destinations: [ads]
    owner: paid@shop.example
    description: The lowcov group.
  aud_anon:                # CS112: 13% anonymous-only (limit 10%)
    segment: anon
    identifiers: [email]
    destinations: [ads]
    owner: paid@shop.example
    description: The anon group.
  aud_small:               # CS104 (20 members) and CS113 (renamed on Meta)
    segment: small
    identifiers: [email]
    destinations: [meta_live]
    owner: paid@shop.example
    description: The small group.
  aud_offer_a:             # CS109: free shipping and 15% off to 20 shared members
    segment: offer_a
    offer: free_shipping
    destinations: [warehouse]
    owner: crm@shop.example
    description: Offer A.
  aud_offer_b:
    segment: offer_b
    offer: discount_15
    destinations: [warehouse]
    owner: crm@shop.example
    description: Offer B.
  aud_dup:                 # CS110: 95% the same members as aud_dup_emailed
    segment: dup
    destinations: [warehouse]
    owner: crm@shop.example
    description: Dup.
  aud_dup_emailed:
    segment: dup_emailed
    destinations: [warehouse]
    owner: crm@shop.example
    description: Dup with an email.
  aud_undocumented:        # CS111: no owner
    segment: undoc
    destinations: [warehouse]
    description: Nobody answers for it.
destinations:
  ads:                     # CS103: 7 ad audiences, limit 6
    type: files
    path: exports
    platform: meta
  meta_live:
    type: meta_custom_audience
    ad_account_id: act_{META_ACCOUNT}
    access_token: {meta_token}
    api_url: {meta_url}
  warehouse:
    type: warehouse
    url: duckdb:///.cohortsync/warehouse.duckdb
lint:
  max_audiences_per_destination: 6
  max_anonymous_share: 0.1
"""
    )


_ids = itertools.count(1)


def _message(kind: str, n: int, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "messageId": f"lint-{next(_ids):08d}",
        "anonymousId": f"a{n}",
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        **fields,
    }


def shoppers(now: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Identify and track messages for every group, two hours before `now`."""
    at = (now or datetime.now(UTC)) - timedelta(hours=2)
    counter = itertools.count()

    def people(
        count: int, *events: str, email: bool = True, phone: bool = False, user: bool = False
    ) -> Iterator[dict[str, Any]]:
        for _ in range(count):
            n = next(counter)
            traits: dict[str, Any] = {}
            if email:
                traits["email"] = f"shopper{n}@example.com"
            if phone:
                traits["phone"] = f"+1 650 555 {1000 + n:04d}"
            extra = {"userId": f"u{n}"} if user else {}
            if traits or extra:
                yield _message("identify", n, at, traits=traits, **extra)
            for event in events:
                yield _message("track", n, at, event=event, properties={}, **extra)

    yield from people(150, "added_to_cart")
    yield from people(150, "product_viewed")
    yield from people(30, "g_hold", "added_to_cart")
    yield from people(270, "g_hold")
    yield from people(150, "g_blind")
    yield from people(150, "g_idmis", user=True)
    yield from people(105, "g_lowcov")
    yield from people(45, "g_lowcov", email=False, phone=True)
    yield from people(130, "g_anon")
    yield from people(20, "g_anon", email=False)
    yield from people(20, "g_small")
    yield from people(80, "g_offer_a")
    yield from people(20, "g_offer_a", "g_offer_b")
    yield from people(80, "g_offer_b")
    yield from people(95, "g_dup")
    yield from people(5, "g_dup", email=False, phone=True)
    yield from people(10, "g_undoc")
