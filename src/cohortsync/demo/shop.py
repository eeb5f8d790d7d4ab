"""Deterministic synthetic D2C shop: Segment-spec messages for demos, tests and benchmarks.

Funnels, replenishment rebuys, subscriptions, refunds, support, owned campaigns and messy identity
data (late identifies, aliases, shared devices, badly typed emails and phones). Output depends only
on (profiles, seed, now): profile i draws from its own `random.Random(seed * 1_000_003 + i)`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from cohortsync.moments import EPOCH

WINDOW_DAYS = 180
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MIN_MS = 60_000
SHOP_URL = "https://shop.example.com"


@dataclass(frozen=True, slots=True)
class Sku:
    """A catalogue product; `replenish_days` is its typical rebuy cycle (None for one-off buys)."""

    sku: str
    name: str
    price: float
    replenish_days: int | None
    category: str = "general"


@dataclass(frozen=True, slots=True)
class Campaign:
    """An owned-channel campaign whose delivered/opened/clicked events carry its id."""

    campaign_id: str
    name: str
    channel: str


SKUS: tuple[Sku, ...] = (
    Sku("COF-ESP-250", "Espresso Roast Coffee 250g", 16.0, 30, "coffee"),
    Sku("COF-DEC-250", "Decaf House Blend 250g", 15.0, 30, "coffee"),
    Sku("VIT-D3-60", "Vitamin D3 60ct", 19.0, 30, "vitamins"),
    Sku("VIT-MULTI-30", "Daily Multivitamin 30ct", 24.0, 30, "vitamins"),
    Sku("SHM-ARG-300", "Argan Oil Shampoo 300ml", 22.0, 45, "haircare"),
    Sku("CND-ARG-300", "Argan Oil Conditioner 300ml", 22.0, 45, "haircare"),
    Sku("PRO-WHEY-1K", "Whey Protein 1kg", 39.0, 40, "nutrition"),
    Sku("TEA-GRN-100", "Green Tea 100 bags", 12.0, 60, "tea"),
    Sku("MUG-CER-01", "Ceramic Mug", 18.0, None, "kitchen"),
    Sku("GRN-BURR-01", "Burr Coffee Grinder", 89.0, None, "kitchen"),
    Sku("BTL-STL-750", "Steel Water Bottle 750ml", 29.0, None, "accessories"),
    Sku("TWL-LIN-01", "Linen Towel Set", 49.0, None, "home"),
    Sku("GFT-CARD-50", "Gift Card $50", 50.0, None, "gift"),
)

CAMPAIGNS: tuple[Campaign, ...] = (
    Campaign("cmp_newsletter_weekly", "weekly_newsletter", "email"),
    Campaign("cmp_welcome_1", "welcome_1", "email"),
    Campaign("cmp_cart_recovery_1", "cart_recovery_1", "email"),
    Campaign("cmp_cart_recovery_sms_1", "cart_recovery_sms_1", "sms"),
    Campaign("cmp_replenish_reminder", "replenish_reminder", "email"),
    Campaign("cmp_winback_60d", "winback_60d", "email"),
)
_NEWSLETTER, _WELCOME, _CART_EMAIL, _CART_SMS, _REPLENISH, _WINBACK = range(6)
_PLANS = {"coffee": ("coffee_club_monthly", 14.4), "vitamins": ("vitamin_club_monthly", 19.8)}
_REPLENISHABLE = tuple(i for i, s in enumerate(SKUS) if s.replenish_days is not None)
_SUPPORT_REASONS = ("damaged_item", "late_delivery", "wrong_item", "billing_issue")
_SUPPORT_CHANNELS = ("email", "chat", "phone")
_FIRST = ("Jane", "John", "Maria", "Wei", "Aisha", "Carlos", "Emma", "Liam", "Olivia", "Noah")
_LAST = ("Doe", "Smith", "Garcia", "Chen", "Khan", "Rossi", "Nguyen", "Patel", "Kim", "Lee")
_DOMAINS = ("example.com", "example.org", "example.net", "gmail.com")
_BAD_EMAILS = ("{f}.{l}@", "n/a", "{f} at gmail.com", "{f}.{l}{i}@@example.com", "none")
_AREAS = ("415", "212", "312", "617", "206", "512", "303", "404")
_PHONE_FORMATS = ("({a}) {e}-{n}", "{a}.{e}.{n}", "+1 {a} {e} {n}", "{a}{e}{n}", "+1{a}{e}{n}")
_BAD_PHONES = ("12", "555", "n/a", "000-0000")
_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Version/17.4 Safari/605",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537",
)
_Page = tuple[str, str, str]
_HOME: _Page = ("/", SHOP_URL + "/", "Home")
_COLLECTION: _Page = ("/collections/all", SHOP_URL + "/collections/all", "Collection")
_CART: _Page = ("/cart", SHOP_URL + "/cart", "Cart")
_CHECKOUT: _Page = ("/checkout", SHOP_URL + "/checkout", "Checkout")
_THANKS: _Page = ("/checkout/thank-you", SHOP_URL + "/checkout/thank-you", "Thank you")
_PRODUCT_PAGES: tuple[_Page, ...] = tuple(
    (f"/products/{s.sku.lower()}", f"{SHOP_URL}/products/{s.sku.lower()}", s.name) for s in SKUS
)
_PAD = tuple(f"{n:02d}" for n in range(60))
_MILLIS = tuple(f"{n:03d}" for n in range(1000))
_COUPONS = ((0.1, "WELCOME10"), (0.15, "SAVE15"))
_Msg = dict[str, Any]
_Items = list[tuple[int, int]]


def _utc_ms(moment: datetime) -> int:
    delta = moment - EPOCH
    return delta.days * DAY_MS + delta.seconds * 1000 + delta.microseconds // 1000


class _Clock:
    """The simulation window (epoch milliseconds) and fast ISO-8601 formatting."""

    def __init__(self, now: datetime) -> None:
        self.hi = _utc_ms(now)
        self.lo = self.hi - WINDOW_DAYS * DAY_MS + 1
        self._hours: dict[int, str] = {}
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        tuesday = midnight - timedelta(days=(now.weekday() - 1) % 7) + timedelta(hours=15)
        if tuesday > now:
            tuesday -= timedelta(days=7)
        self.newsletters = tuple(range(_utc_ms(tuesday), self.lo, -7 * DAY_MS))

    def iso(self, ms: int) -> str:
        hour, rest = divmod(ms, HOUR_MS)
        prefix = self._hours.get(hour)
        if prefix is None:
            prefix = self._hours[hour] = f"{EPOCH + timedelta(hours=hour):%Y-%m-%dT%H}:"
        minute, rest = divmod(rest, MIN_MS)
        second, milli = divmod(rest, 1000)
        return f"{prefix}{_PAD[minute]}:{_PAD[second]}.{_MILLIS[milli]}Z"


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _device(rng: random.Random, anon: str) -> list[Any]:
    ip = ".".join(str(rng.randrange(11, 223)) for _ in range(4))
    return [anon, ip, _AGENTS[int(rng.random() * len(_AGENTS))], None]  # anon, ip, ua, linked_at


class _Profile:
    """Plans and emits one person's (or anonymous visitor's) messages."""

    def __init__(self, clock: _Clock, index: int, rng: random.Random, forced: bool) -> None:
        self.clock, self.i, self.rng = clock, index, rng
        self.out: list[tuple[int, _Msg]] = []
        rnd = rng.random
        self.anon = _uuid(rng)
        self.devices = [_device(rng, self.anon)]
        r = 0.15 + 0.85 * rnd() if forced else rnd()
        self.kind = "anon" if r < 0.15 else "prospect" if r < 0.45 else "buyer"
        mode = 1.0 if forced else rnd()
        self.guest = self.kind == "buyer" and mode < 0.05
        self.alias = 0.05 <= mode < 0.09
        self.uid = None if self.kind == "anon" or self.guest else f"u_{index:06d}"
        first, last = _FIRST[int(rnd() * 10)], _LAST[int(rnd() * 10)]
        self.traits: _Msg = {"first_name": first, "last_name": last}
        self.email_ok, self.phone_ok = self._contact(first, last)
        self.marketing = rnd() < 0.6
        self.can_email = self.uid is not None and self.email_ok and self.marketing
        self.can_sms = self.can_email and self.phone_ok and rnd() < 0.5
        self.traits["accepts_marketing"] = self.marketing
        self.engagement = 0.05 + 0.5 * rnd() ** 2
        self.newsletter = self.can_email and rnd() < 0.7
        self.staple = _REPLENISHABLE[int(rnd() * len(_REPLENISHABLE))] if rnd() < 0.55 else -1

    def _contact(self, first: str, last: str) -> tuple[bool, bool]:
        rnd, i, traits = self.rng.random, self.i, self.traits
        domain = _DOMAINS[int(rnd() * len(_DOMAINS))]
        r, email_ok = rnd(), True
        if r < 0.72:
            traits["email"] = f"{first.lower()}.{last.lower()}{i}@{domain}"
        elif r < 0.84:
            name, tld = domain.split(".")
            traits["email"] = f"{first}.{last}{i}@{name.capitalize()}.{tld.upper()}"
        elif r < 0.92:
            traits["email"] = f"  {first}.{last}{i}@{domain.capitalize()} "
        elif r < 0.95:
            traits["email"] = f"{first}.{last}{i}@{domain}".upper()
        elif r < 0.98:
            bad = _BAD_EMAILS[int(rnd() * len(_BAD_EMAILS))]
            traits["email"], email_ok = bad.format(f=first.lower(), l=last.lower(), i=i), False
        else:
            email_ok = False
        if rnd() >= 0.6:
            return email_ok, False
        if rnd() < 0.05:
            traits["phone"] = _BAD_PHONES[int(rnd() * len(_BAD_PHONES))]
            return email_ok, False
        fmt = _PHONE_FORMATS[int(rnd() * len(_PHONE_FORMATS))]  # unique per person, US-valid
        area, exchange, line = _AREAS[(i // 10_000) % 8], 555 + i // 80_000, f"{i % 10_000:04d}"
        traits["phone"] = fmt.format(a=area, e=exchange, n=line)
        return email_ok, True

    def _web(self, t: int, dev: int, kind: str, label: str, props: _Msg, page: _Page) -> None:
        d = self.devices[dev]
        msg: _Msg = {"type": kind, "messageId": "", "timestamp": "", "anonymousId": d[0]}
        if d[3] is not None and t >= d[3]:
            msg["userId"] = self.uid
        msg["event" if kind == "track" else "name"] = label
        msg["properties"] = props
        ctx_page = {"path": page[0], "url": page[1], "title": page[2]}
        msg["context"] = {"ip": d[1], "userAgent": d[2], "page": ctx_page}
        self.out.append((t, msg))

    def _page(self, t: int, dev: int, name: str, page: _Page) -> None:
        self._web(t, dev, "page", name, {"path": page[0], "url": page[1], "title": page[2]}, page)

    def _server(self, t: int, event: str, props: _Msg, dev: int | None = None) -> None:
        """A backend event; `dev` is the device of the browser session it ends (an order
        placed on the site), whose page, user agent and IP the shop forwards with it."""
        if t > self.clock.hi:
            return
        if self.uid is not None:
            msg: _Msg = {"type": "track", "messageId": "", "timestamp": "", "userId": self.uid}
        else:  # guest checkout: the only identity is the email/phone typed at checkout
            msg = {"type": "track", "messageId": "", "timestamp": "", "anonymousId": self.anon}
        context: _Msg = {}
        if dev is not None:
            d = self.devices[dev]
            context = {"ip": d[1], "userAgent": d[2]}
            context["page"] = {"path": _THANKS[0], "url": _THANKS[1], "title": _THANKS[2]}
        if self.uid is None:
            context["traits"] = self._contact_traits()
        if context:
            msg["context"] = context
        msg["event"], msg["properties"] = event, props
        self.out.append((t, msg))

    def _contact_traits(self) -> _Msg:
        return {k: self.traits[k] for k in ("email", "phone") if k in self.traits}

    def _identify(self, t: int, anon: str | None) -> None:
        msg: _Msg = {"type": "identify", "messageId": "", "timestamp": "", "userId": self.uid}
        if anon is not None:
            msg["anonymousId"] = anon
        msg["traits"] = {**self.traits, "created_at": self.clock.iso(self.id_at)}
        self.out.append((t, msg))

    def _owned(self, t: int, campaign: int, p_open: float) -> int | None:
        """Deliver a campaign message; return the click time when the recipient clicks."""
        hi, rnd = self.clock.hi, self.rng.random
        c = CAMPAIGNS[campaign]
        delivered = f"{c.channel}_delivered"
        for event in (delivered, "email_opened", "email_clicked"):
            if t > hi:
                return None
            props = {"campaign_id": c.campaign_id, "campaign_name": c.name, "channel": c.channel}
            msg: _Msg = {"type": "track", "messageId": "", "timestamp": "", "userId": self.uid}
            msg["event"], msg["properties"] = event, props
            self.out.append((t, msg))
            if event == "email_clicked":
                return t
            if c.channel == "sms" or rnd() >= (p_open if event == delivered else 0.3):
                return None
            t += int(MIN_MS * (2 + 600 * rnd() ** 2)) if event == delivered else 4000
        return None

    def _session(self, t: int, dev: int, intent: str, order: int) -> int:
        """Emit one web visit; returns the add-to-cart time (carts) or the order time."""
        rnd, items = self.rng.random, self.orders[order][1] if order >= 0 else []
        cart_id = f"cart_{self.i:06d}_{t % 100_000_000:08d}" if order < 0 else self.carts[order]
        if intent == "return":
            self._page(t, dev, "Cart", _CART)
        else:
            r = rnd()
            if landing := r < 0.8:
                self._page(t, dev, *(("Home", _HOME) if r < 0.5 else ("Collection", _COLLECTION)))
            staple = self.staple
            for _ in range(0 if items else 1 + int(3 * rnd() ** 2)):
                items.append((staple if staple >= 0 and rnd() < 0.4 else int(rnd() * len(SKUS)), 1))
            for j, (k, _) in enumerate(items):
                t += 8000 + int(80_000 * rnd()) if landing or j else 0
                sku, page = SKUS[k], _PRODUCT_PAGES[k]
                self._page(t, dev, "Product", page)
                props = {"sku": sku.sku, "name": sku.name, "price": sku.price}
                props["category"] = sku.category
                self._web(t + 400, dev, "track", "product_viewed", props, page)
            if intent == "browse":
                return t
            if intent == "cart" and order < 0:
                items = items[-1:]
            for k, qty in items:
                t += 5000 + int(30_000 * rnd())
                props = {"sku": SKUS[k].sku, "price": SKUS[k].price, "quantity": qty}
                props["cart_id"] = cart_id
                self._web(t, dev, "track", "added_to_cart", props, _PRODUCT_PAGES[k])
            if intent == "cart" and rnd() >= 0.35:
                return t
        cart_t = t
        t += 20_000 + int(60_000 * rnd())
        subtotal = round(sum(SKUS[k].price * q for k, q in items), 2)
        self._page(t, dev, "Checkout", _CHECKOUT)
        props = {"cart_id": cart_id, "revenue": subtotal, "currency": "USD"}
        self._web(t + 300, dev, "track", "checkout_started", props, _CHECKOUT)
        if self.uid is None or rnd() < 0.1:  # email typed at checkout, sent in context.traits
            self.out[-1][1]["context"]["traits"] = self._contact_traits()
        if intent == "cart":
            return cart_t
        t += 60_000 + int(240_000 * rnd())
        self._order(t, order, dev)
        return t

    def _order(self, t: int, order: int, dev: int | None = None) -> None:
        """An order: placed in a web session on device `dev`, or a subscription renewal."""
        _, items, pct, coupon = self.orders[order]
        subtotal = sum(SKUS[k].price * q for k, q in items)
        products = [{"sku": SKUS[k].sku, "price": SKUS[k].price, "quantity": q} for k, q in items]
        props: _Msg = {"order_id": f"ord_{self.i:06d}_{order:02d}", "cart_id": self.carts[order]}
        props.update(revenue=round(subtotal * (1 - pct), 2), currency="USD", products=products)
        props["discount"] = pct > 0
        if pct > 0:
            props["coupon"] = coupon
        self._server(t, "order_completed", props, dev)
        self.order_times[order] = t
        rnd = self.rng.random
        if rnd() < 0.05:
            reason, channel = _SUPPORT_REASONS[int(rnd() * 4)], _SUPPORT_CHANNELS[int(rnd() * 3)]
            props = {"order_id": props["order_id"], "reason": reason, "channel": channel}
            self._server(t + int(DAY_MS * (1 + 5 * rnd())), "support_escalated", props)
        if rnd() < 0.04:
            refund = {"order_id": props["order_id"], "revenue": round(subtotal * (1 - pct), 2)}
            self._server(t + int(DAY_MS * (3 + 9 * rnd())), "order_refunded", refund)

    def _plan_orders(self) -> list[float]:
        rnd, staple = self.rng.random, self.staple
        r = rnd()
        last = (
            0.3 + 6.7 * rnd() if r < 0.25 else 7 + 53 * rnd() if r < 0.55 else
            60 + 30 * rnd() if r < 0.75 else 90 + 80 * rnd()
        )  # fmt: skip
        ago, cycle = [last], SKUS[staple].replenish_days if staple >= 0 else None
        while True:
            gap = cycle * (0.85 + 0.4 * rnd()) if cycle else 20 + 50 * rnd()
            if rnd() > (0.8 if cycle else 0.35) or ago[-1] + gap > 170:
                break
            ago.append(ago[-1] + gap)
        ago.reverse()
        for n in range(len(ago)):
            items: _Items = [(staple, 1 + (rnd() < 0.2))] if staple >= 0 else []
            for _ in range((rnd() < 0.4) + (rnd() < 0.1) + (staple < 0)):
                k = int(rnd() * len(SKUS))
                if k != staple and all(k != j for j, _ in items):
                    items.append((k, 1))
            r = rnd()
            pct, coupon = (0.0, "") if r >= (0.3 if n == 0 else 0.12) else _COUPONS[n > 0]
            self.orders.append((ago[n], items, pct, coupon))
            self.carts.append(f"cart_{self.i:06d}_o{n:02d}")
        return ago

    def run(self, shared_anon: str | None) -> list[tuple[int, _Msg]]:
        """Plan this profile's life and emit its messages (unsorted)."""
        rng, rnd, hi = self.rng, self.rng.random, self.clock.hi
        self.orders: list[tuple[float, _Items, float, str]] = []
        self.carts: list[str] = []
        plan: list[tuple[float, int, str, int]] = []  # (days ago, device, intent, order index)
        last = 0.02
        if self.kind == "buyer":
            ago = self._plan_orders()
            sub = self.staple >= 0 and SKUS[self.staple].category in _PLANS and len(ago) >= 3
            self.sub = sub and rnd() < 0.35 and not self.guest
            for n, a in enumerate(ago):
                if self.sub and n >= 2:
                    plan.append((a, 0, "sub", n))
                elif n and self.uid and rnd() < 0.15:  # abandoned first, came back to buy
                    plan += [(a + (3 + 17 * rnd()) / 24, 0, "cart", n), (a, 0, "return", n)]
                else:
                    plan.append((a, 0, "order", n))
            last, first = ago[-1], min(179.5, ago[0] + 10 * rnd())
            end = max(0.02, last - 20) if last > 60 else 0.02
        else:
            first = 0.2 + 179 * rnd()
            end = max(0.02, first - 14) if self.kind == "anon" else 0.02
        for _ in range(1 + int(3 * rnd()) + (self.kind == "prospect")):
            plan.append((end + (first - end) * rnd(), 0, "cart" if rnd() < 0.18 else "browse", -1))
        plan.append((first, 0, "browse", -1))
        if last < 7.3 and not self.guest and rnd() < 0.08:  # recent abandoner, 2-6 hours ago
            plan.append(((2.2 + 3.6 * rnd()) / 24, 0, "cart", -1))
        plan.sort(key=lambda p: -p[0])
        self.order_times: dict[int, int] = {}
        self.id_at = hi + 1
        if self.uid is not None:
            first_order = next((j for j, p in enumerate(plan) if p[3] >= 0), len(plan) - 1)
            pick = first_order if rnd() < 0.6 else int(rnd() ** 2 * (first_order + 1))
            self.id_at = hi - int(plan[pick][0] * DAY_MS) + 20_000
            self.devices[0][3] = self.id_at
            if self.alias:
                msg = {"type": "alias", "messageId": "", "timestamp": "", "previousId": self.anon}
                self.out.append((self.id_at - 1, {**msg, "userId": self.uid}))
            self._identify(self.id_at, None if self.alias else self.anon)
            if rnd() < 0.15:  # a second device (phone) logs in later
                self.devices.append(_device(rng, _uuid(rng)))
            if shared_anon is not None:  # a session on a housemate's device
                self.devices.append(_device(rng, shared_anon))
            for dev in range(1, len(self.devices)):
                plan.append((0.02 + rnd() * max(0, hi - self.id_at) / DAY_MS, dev, "browse", -1))
            plan.sort(key=lambda p: -p[0])
        self._emit(plan, last)
        return self.out

    def _emit(self, plan: list[tuple[float, int, str, int]], last: float) -> None:
        clock, rnd, hi = self.clock, self.rng.random, self.clock.hi
        recovered: dict[int, int] = {}
        for ago, dev, intent, order in plan:
            t = hi - int(ago * DAY_MS)
            device = self.devices[dev]
            if device[3] is None and dev:
                device[3] = t + 20_000
                self._identify(t + 20_000, device[0])
            if intent == "sub":
                self._order(t, order)
                continue
            if intent == "return":
                t = min(t, recovered.get(order, t))
            end = self._session(t, dev, intent, order)
            if intent == "cart" and self.can_email and end >= self.id_at:
                opened = 0.9 if order >= 0 else 0.45
                click = self._owned(end + HOUR_MS + int(rnd() * 600_000), _CART_EMAIL, opened)
                if click is not None and order >= 0:
                    recovered[order] = click + MIN_MS
                if self.can_sms:
                    self._owned(end + 3 * HOUR_MS, _CART_SMS, 0.0)
            if order == 1 and self.sub and intent != "cart":
                plan_name, price = _PLANS[SKUS[self.staple].category]
                props = {"plan": plan_name, "price": price}
                self._server(end + 1000, "subscription_started", props)
                if last > 35 or rnd() < 0.25:  # cancelled some days after the last shipment
                    cancel = last - 3 - 17 * rnd()
                    cancel = cancel if cancel > 0 else last * rnd()
                    self._server(hi - int(cancel * DAY_MS), "subscription_cancelled", dict(props))
        if not self.can_email:
            return
        self._owned(self.id_at + 5 * MIN_MS, _WELCOME, 0.5)
        for sent in clock.newsletters if self.newsletter else ():
            if sent > self.id_at:
                self._owned(sent + int(rnd() * 40 * MIN_MS), _NEWSLETTER, self.engagement)
        times = [self.order_times[n] for n in sorted(self.order_times)]
        if self.staple >= 0 and times:
            remind = ((SKUS[self.staple].replenish_days or 30) - 4) * DAY_MS
            for n, t in enumerate(times):
                if n + 1 == len(times) or times[n + 1] > t + remind:
                    self._owned(t + remind + 9 * HOUR_MS, _REPLENISH, 0.4)
        if times and times[-1] + 60 * DAY_MS <= hi:
            self._owned(times[-1] + 60 * DAY_MS, _WINBACK, 0.2)


def generate_shop(
    profiles: int = 20_000, seed: int = 7, now: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """Yield Segment-spec messages (JSON-serialisable dicts) for a shop's 180 days before `now`."""
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    now = now.astimezone(UTC)
    clock = _Clock(now)
    prefix, iso, hi, lo = f"demo-{seed}-{now:%Y%m%d}-", clock.iso, clock.hi, clock.lo
    first = itemgetter(0)
    count, held, host_anon = 0, list[tuple[int, _Msg]](), ""
    for i in range(profiles):
        sharer, host = i % 50 == 1, i % 50 == 0 and i + 1 < profiles
        profile = _Profile(clock, i, random.Random(seed * 1_000_003 + i), i % 50 < 2)
        out = profile.run(host_anon if sharer else None)
        if host:  # held back so both users of the shared device come out in time order
            held, host_anon = out, profile.anon
            continue
        if held:
            out += held
            held = []
        out.sort(key=first)
        for t, msg in out:
            if lo <= t <= hi:
                msg["messageId"] = prefix + str(count)
                msg["timestamp"] = iso(t)
                count += 1
                yield msg
