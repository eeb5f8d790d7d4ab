"""Plain-English entry and exit rules for segments and audiences."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cohortsync.segments.ast import (
    After,
    All,
    AnyOf,
    Audience,
    Before,
    Between,
    Comparison,
    ComputedTrait,
    Condition,
    Duration,
    EventCondition,
    Ever,
    HasIdentifier,
    Not,
    Segment,
    SegmentProject,
    SegmentRef,
    TraitCondition,
    Window,
    Within,
)

# event key -> (past / participle, present, noun, plural)
_LEXICON: dict[str, tuple[str, str, str, str]] = {
    "order_completed": ("ordered", "orders", "order", "orders"),
    "order_placed": ("ordered", "orders", "order", "orders"),
    "added_to_cart": ("added to cart", "adds to cart", "add to cart", "adds to cart"),
    "product_added": ("added to cart", "adds to cart", "add to cart", "adds to cart"),
    "product_removed": (
        "removed from cart", "removes from cart", "removal from cart", "removals from cart",
    ),
    "product_viewed": ("viewed a product", "views a product", "product view", "product views"),
    "checkout_started": (
        "started checkout", "starts checkout", "checkout start", "checkout starts",
    ),
    "email_opened": ("opened an email", "opens an email", "email open", "email opens"),
    "email_clicked": ("clicked an email", "clicks an email", "email click", "email clicks"),
    "email_delivered": (
        "received an email", "receives an email", "email delivery", "email deliveries",
    ),
    "sms_delivered": ("received a text", "receives a text", "text delivery", "text deliveries"),
    "session_started": ("visited", "visits", "visit", "visits"),
    "app_opened": ("opened the app", "opens the app", "app open", "app opens"),
    "signed_up": ("signed up", "signs up", "sign-up", "sign-ups"),
    "page_viewed": ("viewed a page", "views a page", "page view", "page views"),
    "products_searched": ("searched", "searches", "search", "searches"),
}  # fmt: skip
_VERBS = {
    "viewed": "views", "started": "starts", "completed": "completes", "added": "adds",
    "removed": "removes", "opened": "opens", "clicked": "clicks", "submitted": "submits",
    "shared": "shares", "searched": "searches", "cancelled": "cancels", "canceled": "cancels",
    "created": "creates", "updated": "updates", "downloaded": "downloads", "applied": "applies",
    "reviewed": "reviews", "rated": "rates", "played": "plays", "upgraded": "upgrades",
    "renewed": "renews", "entered": "enters", "saved": "saves", "booked": "books",
}  # fmt: skip
_UNITS = {"m": "minute", "h": "hour", "d": "day", "w": "week"}
_CMP_IS = {"gt": "is more than", "gte": "is at least", "lt": "is less than", "lte": "is at most"}
_CMP_WITH = {"gt": "above", "gte": "at least", "lt": "below", "lte": "at most"}
_COUNTS = {"gt": "more than", "gte": "at least", "lt": "fewer than", "lte": "at most"}
_REFRESH = {
    "realtime": "in real time, as events arrive",
    "15m": "every 15 minutes",
    "1h": "every hour",
    "1d": "every day",
}

Clause = tuple[str, str]  # (subject, predicate); an empty subject means a whole sentence


def explain_segment(segment: Segment, project: SegmentProject) -> str:
    """`Enters when … Leaves when …`, then how any computed trait it uses is computed."""
    cond = segment.condition
    text = f"Enters when {_full(_clause(cond, False))}. {_exits(cond)}"
    notes = [_trait_note(project.traits[t]) for t in _traits(cond) if t in project.traits]
    return " ".join([text, *notes])


def explain_audience(audience: Audience, project: SegmentProject) -> str:
    """Who is published, the underlying segment's rules, exclusions, holdout and refresh."""
    head = f"Audience {audience.name}: everyone in {audience.segment}"
    if audience.exclude:
        head += f", except anyone in {_series(list(audience.exclude), 'or')}"
    lines = [head + "."]
    if audience.description:
        lines.append(audience.description)
    segment = project.segments.get(audience.segment)
    if segment is not None:
        lines.append(f"{segment.name}: {explain_segment(segment, project)}")
    for name in audience.exclude:
        lines.append(f"Also leaves when it enters {name}.")
    if audience.holdout_percent is not None:
        percent = f"{audience.holdout_percent:g}"
        lines.append(
            f"Holdout: {percent}% of members are held back as a control group and never sent."
        )
    refresh = _REFRESH.get(audience.refresh, f"on the cron schedule {audience.refresh}")
    lines.append(f"Refreshed {refresh}.")
    if audience.identifiers:
        lines.append(f"Sends identifiers: {', '.join(audience.identifiers)}.")
    if audience.destinations:
        lines.append(f"Synced to: {', '.join(audience.destinations)}.")
    if audience.owner:
        lines.append(f"Owner: {audience.owner}.")
    return "\n".join(lines)


# -- words -------------------------------------------------------------------------------


def _human(name: str) -> str:
    return name.replace("_", " ")


def _event_words(event: str) -> tuple[str, str, str, str]:
    """(past, present, noun, plural) for an event key."""
    if event in _LEXICON:
        return _LEXICON[event]
    words = event.split("_")
    if len(words) >= 2 and words[-1] in _VERBS:
        obj = " ".join(words[:-1])
        article = "an" if obj[0] in "aeiou" else "a"
        past, present = words[-1], _VERBS[words[-1]]
        noun = f"{_human(event)} event"
        return f"{past} {article} {obj}", f"{present} {article} {obj}", noun, noun + "s"
    noun = f"{_human(event)} event"
    article = "an" if noun[0] in "aeiou" else "a"
    return f"had {article} {noun}", f"has {article} {noun}", noun, noun + "s"


def _duration(d: Duration) -> str:
    amount, unit = int(d.text[:-1]), _UNITS[d.text[-1]]
    return f"{amount} {unit}{'' if amount == 1 else 's'}"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple | list):
        return _series([_value(v) for v in value], "or")
    return f"{value:g}" if isinstance(value, float) else str(value)


def _series(items: list[str], word: str) -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def _is(c: Comparison, negated: bool = False, exit_: bool = False) -> str:
    """The predicate of `its TRAIT …`: `is at least 500`, `is not set`, `no longer contains …`."""
    op, v = c.op, c.value
    if op == "exists":
        v, op = not v if negated or exit_ else v, "eq"
        negated = exit_ = False
        return "is set" if v else "is not set"
    if op in ("ne", "not_in"):
        op, negated = ("eq" if op == "ne" else "in"), not negated
    if op == "contains":
        if exit_:
            return f"no longer contains {_value(v)}"
        return f"{'does not contain' if negated else 'contains'} {_value(v)}"
    phrase = {"eq": "is", "in": "is one of"}.get(op) or _CMP_IS[op]
    if exit_:
        phrase = phrase.replace("is", "is no longer", 1)
    elif negated:
        phrase = phrase.replace("is", "is not", 1)
    return f"{phrase} {_value(v)}"


def _with(c: Comparison) -> str:
    """A `where` filter: `total at least 100`, `plan "pro"`, `coupon set`."""
    field, v = _human(c.field), c.value
    if c.op == "exists":
        return f"{field} set" if v else f"no {field}"
    phrase = {
        "eq": "",
        "ne": "other than ",
        "in": "one of ",
        "not_in": "not one of ",
        "contains": "containing ",
    }.get(c.op)
    if phrase is None:
        phrase = _CMP_WITH[c.op] + " "
    return f"{field} {phrase}{_value(v)}"


def _times(op: str, n: int) -> str:
    if op == "gte" and n == 1:
        return ""
    word = {1: "once", 2: "twice"}.get(n, f"{n} times")
    if op == "eq":
        return "exactly " + word if n else "zero times"
    if op == "ne":
        return "other than " + word
    return f"{_COUNTS[op]} {word}"


def _window(window: Window) -> str:
    if isinstance(window, Within):
        return f"within the last {_duration(window.duration)}"
    if isinstance(window, Between):
        older, newer = _duration(window.older), _duration(window.newer)
        if window.older.text[-1] == window.newer.text[-1]:
            older = older.split(" ")[0]
        if window.newer.micros == 0:
            return f"within the last {_duration(window.older)}, now included"
        return f"between {older} and {newer} ago"
    if isinstance(window, Before):
        return f"more than {_duration(window.duration)} ago"
    if isinstance(window, After):
        where = " and ".join(_with(w) for w in window.where)
        anchor = _event_words(window.event)[2] + (f" with {where}" if where else "")
        if window.within is not None:
            return f"within {_duration(window.within)} after its latest {anchor}"
        return f"{'after' if where else 'since'} its latest {anchor}"
    return ""


def _none_after(c: EventCondition) -> bool:
    """Whether `c` asks for no event after an anchor (`count: {eq: 0}` with `after:`/`since:`),
    which reads as "has not …" (it needs the anchor, as "its latest …" says)."""
    none = (c.count_op, c.count) in (("eq", 0), ("lte", 0), ("lt", 1))
    return none and isinstance(c.window, After)


# -- clauses -----------------------------------------------------------------------------


def _full(clause: Clause) -> str:
    return f"{clause[0]} {clause[1]}".strip()


def _event(c: EventCondition, negated: bool) -> Clause:
    past, _, _, _ = _event_words(c.event)
    where = " and ".join(_with(w) for w in c.where)
    none_after = _none_after(c) and not negated
    parts = [
        past,
        f"with {where}" if where else "",
        "" if none_after else _times(c.count_op, c.count),
        _window(c.window),
    ]
    body = " ".join(p for p in parts if p)
    if negated or none_after:
        return "it", f"has not {body}"
    if isinstance(c.window, Ever):
        return "it", f"has {body}"
    return "it", body


def _join(clauses: list[Clause], word: str) -> Clause:
    subjects = {s for s, _ in clauses}
    if len(subjects) == 1 and "" not in subjects:
        return clauses[0][0], _series([p for _, p in clauses], word)
    return "", _series([_full(c) for c in clauses], word)


def _clause(cond: Condition, negated: bool) -> Clause:
    """The condition (or its negation, pushed down by De Morgan) as subject and predicate."""
    if isinstance(cond, Not):
        return _clause(cond.condition, not negated)
    if isinstance(cond, All | AnyOf):
        word = "and" if isinstance(cond, All) != negated else "or"
        parts: list[Clause] = []
        for child in cond.conditions:
            subject, pred = _clause(child, negated)
            inner = _strip(child)
            ands = isinstance(inner, All) != _odd(child, negated)
            if isinstance(inner, All | AnyOf) and ands and len(inner.conditions) == 2:
                pred = f"both {pred}"
            parts.append((subject, pred))
        subject, pred = _join(parts, word)
        return subject, f"either {pred}" if word == "or" and len(parts) > 1 else pred
    if isinstance(cond, EventCondition):
        return _event(cond, negated)
    if isinstance(cond, TraitCondition):
        c = cond.comparison
        return f"its {_human(c.field)}", _is(c, negated)
    if isinstance(cond, HasIdentifier):
        kind = _human(cond.kind)
        return "it", (f"has no {kind}" if negated else f"has {_article(kind)} {kind}")
    return "it", f"is {'not ' if negated else ''}in {cond.name}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _strip(cond: Condition) -> Condition:
    while isinstance(cond, Not):
        cond = cond.condition
    return cond


def _odd(cond: Condition, negated: bool) -> bool:
    while isinstance(cond, Not):
        negated, cond = not negated, cond.condition
    return negated


# -- exits -------------------------------------------------------------------------------


def _conjuncts(cond: Condition, negated: bool = False) -> list[tuple[Condition, bool]]:
    """The parts that must all hold (with their polarity): leaving is any one failing."""
    if isinstance(cond, Not):
        return _conjuncts(cond.condition, not negated)
    if isinstance(cond, All) and not negated:
        return [p for c in cond.conditions for p in _conjuncts(c, False)]
    if isinstance(cond, AnyOf) and negated:
        return [p for c in cond.conditions for p in _conjuncts(c, True)]
    return [(cond, negated)]


def _exit(cond: Condition, negated: bool) -> tuple[int, str] | None:
    """How one conjunct stops holding: (0, event-driven) or (1, time-driven); None if never."""
    if isinstance(cond, EventCondition) and _none_after(cond) and not negated:
        # None after the anchor leaves as "not any after it" does: on a matching event.
        cond, negated = replace(cond, count_op="gte", count=1), True
    if isinstance(cond, EventCondition) and cond.count_op == "gte" and cond.count == 1:
        _, present, noun, _ = _event_words(cond.event)
        where = " and ".join(_with(w) for w in cond.where)
        with_ = f" with {where}" if where else ""
        window = cond.window
        if not negated:
            if isinstance(window, Ever | Before):
                return None
            if isinstance(window, Within):
                return 1, f"{_duration(window.duration)} after its latest {noun}{with_}"
            if isinstance(window, After):  # a later anchor starts an empty window
                anchor = " and ".join(_with(w) for w in window.where)
                with_anchor = f" with {anchor}" if anchor else ""
                return 0, f"when it {_event_words(window.event)[1]}{with_anchor} again"
            if isinstance(window, Between):
                return 1, f"when it has no {noun}{with_} from {_window(window)} any more"
        elif not isinstance(window, Between | Before):
            bounded = isinstance(window, After) and window.within is not None
            return 0, f"when it {present}{with_}" + (f" {_window(window)}" if bounded else "")
    if isinstance(cond, TraitCondition) and not negated:
        return 0, f"when its {_human(cond.comparison.field)} {_is(cond.comparison, exit_=True)}"
    if isinstance(cond, SegmentRef):
        return 0, f"when it {'enters' if negated else 'leaves'} {cond.name}"
    if isinstance(cond, HasIdentifier) and negated:
        return 0, f"when it gets {_article(_human(cond.kind))} {_human(cond.kind)}"
    return 0, f"when {_full(_clause(cond, not negated))}"


def _exits(cond: Condition) -> str:
    found = [_exit(c, n) for c, n in _conjuncts(cond)]
    exits = sorted((e for e in found if e is not None), key=lambda e: e[0])
    if not exits:
        return "Never leaves once it has entered."
    return f"Leaves {', or '.join(text for _, text in exits)}."


# -- computed traits ---------------------------------------------------------------------


def _traits(cond: Condition) -> list[str]:
    if isinstance(cond, TraitCondition):
        return [cond.comparison.field]
    if isinstance(cond, Not):
        return _traits(cond.condition)
    if isinstance(cond, All | AnyOf):
        seen: list[str] = []
        for child in cond.conditions:
            seen += [t for t in _traits(child) if t not in seen]
        return seen
    return []


def _trait_note(trait: ComputedTrait) -> str:
    plural = _event_words(trait.event)[3]
    where = " and ".join(_with(w) for w in trait.where)
    scope = f"its {plural}" + (f" with {where}" if where else "")
    window = _window(trait.window)
    scope += f" {window}" if window else " ever"
    prop = _human(trait.prop or "")
    what = {
        "count": f"the number of {scope}",
        "sum": f"the sum of {prop} over {scope}",
        "avg": f"the average {prop} over {scope}",
        "min": f"the smallest {prop} over {scope}",
        "max": f"the largest {prop} over {scope}",
        "first": f"the {prop} of the earliest of {scope}",
        "last": f"the {prop} of the latest of {scope}",
        "distinct_count": f"the number of distinct {prop} values over {scope}",
        "most_frequent": f"the most frequent {prop} over {scope}",
    }[trait.aggregation]
    name = _human(trait.name)
    return f"{name[0].upper()}{name[1:]} is {what}."


# -- an audience's rules, for the catalog -------------------------------------------------


def audience_rules(audience: Audience, project: SegmentProject) -> tuple[str, str]:
    """(`Enters when …`, `Leaves when …`) of an audience: its segment's rule with every
    exclusion written out in place, so exits by purchase and by time read in one sentence."""
    segment = project.segments.get(audience.segment)
    if segment is None:
        return (
            f"Enters when it is in {audience.segment}.",
            f"Leaves when it leaves {audience.segment}.",
        )
    excluded = [
        Not(project.segments[name].condition)
        for name in audience.exclude
        if name in project.segments
    ]
    rule = All((segment.condition, *excluded)) if excluded else segment.condition
    entry = f"Enters when {_full(_clause(rule, False))}."
    found = [_exit(c, n) for c, n in _conjuncts(rule)]
    exits = sorted(dict.fromkeys(e for e in found if e is not None), key=lambda e: e[0])
    if not exits:
        return entry, "Never leaves once it has entered."
    return entry, f"Leaves {', or '.join(text for _, text in exits)}."


def refresh_words(refresh: str) -> str:
    """How often an audience is refreshed, in words (`every hour`)."""
    return _REFRESH.get(refresh, f"on the cron schedule {refresh}")
