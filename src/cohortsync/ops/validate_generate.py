"""Generate test profiles that belong to a chosen audience now, from its segment tree.

Each condition is turned into needs (events to place inside a window, with properties that
satisfy `where`; a computed trait's target; an identifier), alternatives where the tree offers
them (`any`, a `not` of `all`). Events are placed inside their windows far enough from the
edges to stay there while the validation runs, and every candidate is checked with the Python
evaluator before it is used: what the evaluator does not confirm is never sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any

from cohortsync.ops.validate_model import (
    DAY_US,
    HOUR_US,
    PlannedEvent,
    TestProfile,
    audiences_of,
    history,
)
from cohortsync.segments.ast import (
    After,
    All,
    AnyOf,
    Before,
    Between,
    Comparison,
    Condition,
    EventCondition,
    Ever,
    HasIdentifier,
    Not,
    SegmentProject,
    SegmentRef,
    TraitCondition,
    Window,
    Within,
)
from cohortsync.segments.evaluate import MISSING, compare, lookup

MAX_PLANS = 48
MINUTE_US = 60_000_000
_NEGATED = {
    "eq": "ne", "ne": "eq", "in": "not_in", "not_in": "in",
    "gt": "lte", "gte": "lt", "lt": "gte", "lte": "gt",
}  # fmt: skip
_SPOTS = (0.5, 0.3, 0.7)
"""Where inside its safe range an event is placed, one per attempt."""
_DEFAULT_AGO = (100 * DAY_US, 30 * DAY_US, 2 * DAY_US, 150 * DAY_US)
"""When an event with no window of its own happened, one per attempt."""


@dataclass(frozen=True)
class Need:
    """`count` events of `event` inside `window`, with properties satisfying `where`."""

    event: str
    where: tuple[Comparison, ...]
    window: Window
    count: int


@dataclass(frozen=True)
class TraitNeed:
    """A trait (computed, or set by identify) satisfying a comparison."""

    comparison: Comparison


@dataclass(frozen=True)
class IdNeed:
    """An identifier of `kind`."""

    kind: str


Plan = tuple[Need | TraitNeed | IdNeed, ...]


def _count_for(op: str, n: int, want: bool) -> int | None:
    """The fewest events whose count makes `count OP n` come out `want`."""
    for k in range(n + 2):
        if compare(k, op, n) == want:
            return k
    return None


def plans(c: Condition, want: bool, project: SegmentProject, depth: int = 0) -> list[Plan]:
    """Ways (each a conjunction of needs) to make `c` evaluate to `want`; [] when none found."""
    if depth > 20:
        return []
    if isinstance(c, SegmentRef):
        return plans(project.segments[c.name].condition, want, project, depth + 1)
    if isinstance(c, Not):
        return plans(c.condition, not want, project, depth + 1)
    if isinstance(c, All | AnyOf):
        conjunction = isinstance(c, All) == want
        parts = [plans(x, want, project, depth + 1) for x in c.conditions]
        if not conjunction:
            return [p for part in parts for p in part][:MAX_PLANS]
        combined: list[Plan] = [()]
        for part in parts:
            combined = [a + b for a, b in product(combined, part)][:MAX_PLANS]
        return combined
    if isinstance(c, EventCondition):
        count = _count_for(c.count_op, c.count, want)
        if count is None:
            return []
        needs: list[Need] = []
        if isinstance(c.window, After):  # no anchor event makes the whole condition false
            if not want and count > 0:
                return [()]
            needs.append(Need(c.window.event, c.window.where, Ever(), 1))
        if count:
            needs.append(Need(c.event, c.where, c.window, count))
        return [tuple(needs)]
    if isinstance(c, TraitCondition):
        cmp = c.comparison
        if want:
            return [(TraitNeed(cmp),)]
        negated = _negate(cmp)
        return [(), *([(TraitNeed(negated),)] if negated else [])]
    if isinstance(c, HasIdentifier):
        if want:
            return [(IdNeed(c.kind),)]
        return [] if c.kind in ("email", "user_id") else [()]
    return []


def _negate(cmp: Comparison) -> Comparison | None:
    if cmp.op == "exists":
        return Comparison(cmp.field, "exists", not cmp.value)
    op = _NEGATED.get(cmp.op)
    return Comparison(cmp.field, op, cmp.value) if op else None


def satisfying(comparisons: Sequence[Comparison]) -> Any:
    """A value for which every comparison holds (MISSING: leave it absent; None: none found)."""
    candidates: list[Any] = []
    numbers = [c.value for c in comparisons if isinstance(c.value, int | float)]
    numbers = [v for v in numbers if not isinstance(v, bool)]
    lo = max((c.value for c in comparisons if c.op in ("gt", "gte") and _num(c)), default=None)
    hi = min((c.value for c in comparisons if c.op in ("lt", "lte") and _num(c)), default=None)
    if lo is not None and hi is not None:
        candidates.append((lo + hi) / 2)
    if lo is not None:
        candidates += [lo, lo + max(1, abs(lo) * 0.1)]
    if hi is not None:
        candidates += [hi, hi - max(1, abs(hi) * 0.1), hi / 2]
    for c in comparisons:
        if c.op == "eq":
            candidates.insert(0, c.value)
        elif c.op == "in" and isinstance(c.value, list | tuple) and c.value:
            candidates.insert(0, c.value[0])
        elif c.op == "contains":
            candidates.append(str(c.value))
        elif c.op == "ne":
            candidates.append(_other(c.value))
        elif c.op == "not_in":
            values = c.value if isinstance(c.value, list | tuple) else [c.value]
            candidates.append(_other(values[0] if values else "x"))
    candidates += [MISSING, "cohortsync-test", 1, *(v + 1 for v in numbers), True, False]
    for value in candidates:
        if all(compare(value, c.op, c.value) for c in comparisons):
            return value
    return None


def _num(c: Comparison) -> tuple[Comparison, ...]:
    """`(c,)` when its literal is a number (not a bool), else ()."""
    return (c,) if isinstance(c.value, int | float) and not isinstance(c.value, bool) else ()


def _other(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    return f"{value}-other"


@dataclass
class _Draft:
    """Events being placed for one plan and attempt."""

    attempt: int
    horizon_us: int
    events: list[PlannedEvent] = field(default_factory=list)
    traits: dict[str, Any] = field(default_factory=dict)
    phone: bool = False

    def ago_in(self, window: Window) -> int:
        """How long ago an event inside `window` happens, so it stays inside for the horizon."""
        spot = _SPOTS[self.attempt % len(_SPOTS)]
        margin = min(self.horizon_us, HOUR_US)
        if isinstance(window, Within):
            lo, hi = margin, window.duration.micros - self.horizon_us
        elif isinstance(window, Between):
            lo, hi = window.newer.micros + margin, window.older.micros - self.horizon_us
        elif isinstance(window, Before):
            return window.duration.micros + DAY_US + int(spot * 10 * DAY_US)
        else:
            return _DEFAULT_AGO[self.attempt % len(_DEFAULT_AGO)]
        if hi <= lo:  # a window narrower than the horizon: its middle
            lo, hi = lo - margin, hi + self.horizon_us
        return int(lo + (hi - lo) * spot)

    def place(self, need: Need) -> bool:
        props = _properties(need.where)
        if props is None:
            return False
        if isinstance(need.window, After):
            anchors = [
                e.ago_us for e in self.events if _passes(e, need.window.event, need.window.where)
            ]
            if not anchors:
                return False
            latest = min(anchors)  # after the latest anchor, inside its `within` when it has one
            within = need.window.within
            base = latest - (latest // 2 if within is None else min(latest, within.micros) // 2)
        else:
            base = self.ago_in(need.window)
        for i in range(need.count):
            self.events.append(PlannedEvent(need.event, max(base - i * MINUTE_US, 0), props))
        return True


def _passes(e: PlannedEvent, event: str, where: Sequence[Comparison]) -> bool:
    """Whether a planned event is an `event` whose properties satisfy `where`."""
    return e.event == event and all(
        compare(lookup(e.properties, c.field), c.op, c.value) for c in where
    )


def _properties(where: Sequence[Comparison]) -> dict[str, Any] | None:
    """Properties satisfying every comparison of a `where` (dotted names nest)."""
    props: dict[str, Any] = {}
    fields = dict.fromkeys(c.field for c in where)
    for name in fields:
        value = satisfying([c for c in where if c.field == name])
        if value is None:
            return None
        if value is MISSING:
            continue
        target = props
        *parents, leaf = name.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return props


def build(plan: Plan, project: SegmentProject, attempt: int, horizon_us: int) -> _Draft | None:
    """Events, traits and identifiers meeting every need of `plan` (None when it cannot)."""
    draft = _Draft(attempt, horizon_us)
    needs = [n for n in plan if isinstance(n, Need)]
    anchors = {n.window.event for n in needs if isinstance(n.window, After)}
    # Windowed events first (anchors of `since`/`after` among them), then events relative to
    # anchors.
    for need in sorted(needs, key=lambda n: (isinstance(n.window, After), n.event not in anchors)):
        anchor = need.window == Ever() and need.count == 1
        if anchor and any(_passes(e, need.event, need.where) for e in draft.events):
            continue  # an anchor another need already placed
        if not draft.place(need):
            return None
    for kind in {n.kind for n in plan if isinstance(n, IdNeed)}:
        if kind == "phone":
            draft.phone = True
        elif kind not in ("email", "user_id"):
            return None
    wanted: dict[str, list[Comparison]] = {}
    for n in plan:
        if isinstance(n, TraitNeed):
            wanted.setdefault(n.comparison.field, []).append(n.comparison)
    for name, comparisons in wanted.items():
        if not _meet_trait(draft, project, name, comparisons):
            return None
    return draft


def _meet_trait(
    draft: _Draft, project: SegmentProject, name: str, comparisons: list[Comparison]
) -> bool:
    trait = project.traits.get(name)
    value = satisfying(comparisons)
    if value is None:
        return False
    if trait is None:  # an identify trait
        if value is not MISSING:
            draft.traits[name] = value
        return True
    if value is MISSING:
        return not any(e.event == trait.event for e in draft.events)
    mine = [e for e in draft.events if e.event == trait.event]
    props = _properties(trait.where) or {}
    wanted = 1
    if trait.aggregation in ("count", "distinct_count"):
        if not isinstance(value, int | float) or isinstance(value, bool) or value < len(mine):
            return bool(value == len(mine))
        wanted = int(value)
    while len(mine) < wanted:
        event = PlannedEvent(trait.event, draft.ago_in(trait.window), dict(props))
        draft.events.append(event)
        mine.append(event)
    if trait.prop is None or trait.aggregation == "count":
        return True
    for i, event in enumerate(mine):
        if trait.aggregation == "sum" and isinstance(value, int | float):
            event.properties[trait.prop] = value / len(mine)
        elif trait.aggregation == "distinct_count":
            event.properties[trait.prop] = f"v{i}"
        else:
            event.properties[trait.prop] = value
    return True


def generate_for(
    audience: str,
    project: SegmentProject,
    profile: TestProfile,
    now_us: int,
    horizon_us: int,
) -> bool:
    """Fill `profile` with events that put it into `audience` from now to now + horizon, as the
    evaluator confirms; False (the profile left empty) when no plan found does."""
    condition = project.audiences[audience].condition
    instants = (now_us, now_us + horizon_us // 2, now_us + horizon_us)
    for plan in plans(condition, True, project):
        for attempt in range(len(_DEFAULT_AGO)):
            draft = build(plan, project, attempt, horizon_us)
            if draft is None:
                continue
            profile.events = sorted(draft.events, key=lambda e: -e.ago_us)
            profile.traits = draft.traits
            profile.phone = _phone(profile.number) if draft.phone else None
            hist = history(profile, now_us)
            expect = audiences_of(project, hist, instants)
            if audience in expect and expect == audiences_of(project, hist, (now_us,)):
                profile.expect = expect
                profile.target = audience
                return True
    profile.events, profile.traits, profile.phone = [], {}, None
    return False


def _phone(number: int) -> str:
    """A fictional US number (555-01xx) for profiles that need a phone."""
    return f"+1202555{100 + number % 100:04d}"
