"""Real-time segment evaluation per profile: the Python twin of the SQL compiler (see `ast.py`)."""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cohortsync.segments.ast import (
    After,
    All,
    AnyOf,
    Before,
    Between,
    Comparison,
    ComputedTrait,
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

__all__ = [
    "EventRecord",
    "ProfileHistory",
    "compare",
    "compute_trait",
    "evaluate",
    "lookup",
    "next_change",
]


class _Missing:
    """Marker for an absent (or null) property or trait."""

    def __repr__(self) -> str:
        """Show as MISSING."""
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class EventRecord:
    """One tracked event of a profile; `event` is the snake_case event key."""

    message_id: str
    event: str
    timestamp_us: int
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Series:
    """The events of one name, in (timestamp_us, message_id) order, with their timestamps."""

    events: tuple[EventRecord, ...]
    times: tuple[int, ...]


_EMPTY = _Series((), ())


def _order(e: EventRecord) -> tuple[int, str]:
    """Canonical event order: by timestamp, then message_id."""
    return (e.timestamp_us, e.message_id)


@dataclass(frozen=True)
class ProfileHistory:
    """Everything known about one profile: its events, identify traits and identifiers."""

    profile_id: str
    events: tuple[EventRecord, ...] = ()
    traits: Mapping[str, Any] = field(default_factory=dict)
    identifiers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    _series: dict[str, _Series] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Index the events by name (sorted defensively) for bisecting windows."""
        groups: dict[str, list[EventRecord]] = {}
        for e in self.events:
            groups.setdefault(e.event, []).append(e)
        index: dict[str, _Series] = {}
        for name, evs in groups.items():
            evs.sort(key=_order)
            index[name] = _Series(tuple(evs), tuple(e.timestamp_us for e in evs))
        object.__setattr__(self, "_series", index)

    def series(self, event: str) -> _Series:
        """The events named `event` (empty when none)."""
        return self._series.get(event, _EMPTY)


# --- comparisons -------------------------------------------------------------------------


def lookup(obj: Any, dotted: str) -> Any:
    """Follow a dotted name into nested mappings; MISSING when absent or null."""
    for part in dotted.split("."):
        if not isinstance(obj, Mapping):
            return MISSING
        obj = obj.get(part, MISSING)
        if obj is None:
            return MISSING
    return obj


def _kind(v: Any) -> str | None:
    """The comparison type of a value: num (not bool), str, bool, or None (not comparable)."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "num"
    if isinstance(v, str):
        return "str"
    return None


def compare(value: Any, op: str, lit: Any) -> bool:
    """`value OP lit` with the contract's rules (MISSING, type mismatch → False)."""
    if op == "exists":
        return (value is not MISSING) == bool(lit)
    if value is MISSING:
        return False
    if op == "in":
        lits = lit if isinstance(lit, list | tuple) else [lit]
        return any(compare(value, "eq", x) for x in lits)
    if op in ("ne", "not_in"):
        # The exact complements of eq / in over present values (see ast.py).
        return not compare(value, "eq" if op == "ne" else "in", lit)
    if op == "contains":
        return isinstance(value, str) and isinstance(lit, str) and lit in value
    kind = _kind(value)
    if kind is None or kind != _kind(lit):
        if op in ("eq", "ne", "gt", "gte", "lt", "lte"):
            return False
        raise ValueError(f"unknown operator {op!r}")
    if op == "eq":
        return bool(value == lit)
    if kind == "bool" and op in ("gt", "gte", "lt", "lte"):
        return False
    if op == "gt":
        return bool(value > lit)
    if op == "gte":
        return bool(value >= lit)
    if op == "lt":
        return bool(value < lit)
    if op == "lte":
        return bool(value <= lit)
    raise ValueError(f"unknown operator {op!r}")


def _where_ok(e: EventRecord, where: tuple[Comparison, ...]) -> bool:
    """Every `where` comparison holds for the event's properties."""
    props = e.properties
    return all(compare(lookup(props, c.field), c.op, c.value) for c in where)


# --- windows ------------------------------------------------------------------------------


def _anchor(window: After, h: ProfileHistory, end: int) -> EventRecord | None:
    """The anchor of an After window: the latest `window.event` passing its `where` at or
    before `end` (None when there is none)."""
    ref = h.series(window.event)
    for i in range(bisect_right(ref.times, end) - 1, -1, -1):
        if not window.where or _where_ok(ref.events[i], window.where):
            return ref.events[i]
    return None


def _span(window: Window, s: _Series, h: ProfileHistory, t: int, cap: int) -> range | None:
    """Indices of `s` in `window` as of `t`, ignoring events after `cap`; None: no anchor."""
    times = s.times
    end = min(t, cap)
    hi = bisect_right(times, end)
    if isinstance(window, Ever):
        lo = 0
    elif isinstance(window, Within):
        lo = bisect_right(times, t - window.duration.micros)
    elif isinstance(window, Between):
        lo = bisect_left(times, t - window.older.micros)
        hi = min(hi, bisect_right(times, t - window.newer.micros))
    elif isinstance(window, Before):
        lo = 0
        hi = min(hi, bisect_left(times, t - window.duration.micros))
    elif isinstance(window, After):
        anchor = _anchor(window, h, end)
        if anchor is None:
            return None
        lo = bisect_right(times, anchor.timestamp_us)
        if window.within is not None:
            hi = min(hi, bisect_right(times, anchor.timestamp_us + window.within.micros))
    else:
        raise TypeError(f"unknown window {window!r}")
    return range(lo, max(lo, hi))


def _matching(
    event: str, where: tuple[Comparison, ...], window: Window, h: ProfileHistory, t: int, cap: int
) -> list[EventRecord] | None:
    """The matching events as of `t`, in order; None when an After anchor never happened."""
    s = h.series(event)
    span = _span(window, s, h, t, cap)
    if span is None:
        return None
    evs = s.events[span.start : span.stop]
    return [e for e in evs if _where_ok(e, where)] if where else list(evs)


# --- evaluation ---------------------------------------------------------------------------


def _eval_event(c: EventCondition, h: ProfileHistory, t: int, cap: int) -> bool:
    """Count the matching events and compare with N."""
    s = h.series(c.event)
    span = _span(c.window, s, h, t, cap)
    if span is None:
        return False
    if not c.where:
        return compare(len(span), c.count_op, c.count)
    evs, where = s.events, c.where
    if c.count_op == "gte" and c.count == 1:
        return any(_where_ok(evs[i], where) for i in span)
    n = sum(1 for i in span if _where_ok(evs[i], where))
    return compare(n, c.count_op, c.count)


def _trait_value(name: str, h: ProfileHistory, t: int, cap: int, project: SegmentProject) -> Any:
    """A trait by (dotted) name: computed traits win over identify traits."""
    traits = project.traits
    head, _, rest = name.partition(".")
    if name in traits or head in traits:
        key, rest = (name, "") if name in traits else (head, rest)
        value = _compute(traits[key], h, t, cap)
        if value is None:
            return MISSING
        return lookup(value, rest) if rest else value
    return lookup(h.traits, name)


def _eval(c: Condition, h: ProfileHistory, t: int, cap: int, project: SegmentProject) -> bool:
    """Evaluate `c` as of `t`, treating events after `cap` as not existing."""
    if isinstance(c, EventCondition):
        return _eval_event(c, h, t, cap)
    if isinstance(c, All):
        return all(_eval(x, h, t, cap, project) for x in c.conditions)
    if isinstance(c, AnyOf):
        return any(_eval(x, h, t, cap, project) for x in c.conditions)
    if isinstance(c, Not):
        return not _eval(c.condition, h, t, cap, project)
    if isinstance(c, TraitCondition):
        cmp = c.comparison
        return compare(_trait_value(cmp.field, h, t, cap, project), cmp.op, cmp.value)
    if isinstance(c, HasIdentifier):
        return bool(h.identifiers.get(c.kind))
    if isinstance(c, SegmentRef):
        return _eval(project.segments[c.name].condition, h, t, cap, project)
    raise TypeError(f"unknown condition {c!r}")


def evaluate(
    condition: Condition, history: ProfileHistory, at: int, project: SegmentProject
) -> bool:
    """Whether the profile satisfies `condition` as of `at` (only events <= `at` exist)."""
    return _eval(condition, history, at, at, project)


# --- computed traits ----------------------------------------------------------------------


def _canon(v: Any) -> str:
    """Canonical JSON text of a value, for distinct/frequency comparisons."""
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _tie_key(v: Any, canon: str) -> tuple[int, float, str, str]:
    """most_frequent tie order: numbers (by value), strings, booleans, others; then JSON text."""
    kind = _kind(v)
    if kind == "num":
        return (0, float(v), "", canon)
    if kind == "str":
        return (1, 0.0, v, canon)
    if kind == "bool":
        return (2, 0.0, canon, canon)
    return (3, 0.0, "", canon)


def _compute(trait: ComputedTrait, h: ProfileHistory, t: int, cap: int) -> Any:
    """Aggregate the trait's property over its matching events as of `t`."""
    evs = _matching(trait.event, trait.where, trait.window, h, t, cap) or []
    agg, prop = trait.aggregation, trait.prop
    if prop is None:
        if agg == "count":
            return len(evs)
        raise ValueError(f"computed trait {trait.name!r}: {agg} needs a property")
    values = [v for e in evs if (v := lookup(e.properties, prop)) is not MISSING]
    if agg == "count":
        return len(values)
    if agg in ("sum", "avg", "min", "max"):
        nums = [v for v in values if _kind(v) == "num"]
        if not nums:
            return None
        if agg == "sum":
            return sum(nums)
        if agg == "avg":
            return sum(nums) / len(nums)
        return min(nums) if agg == "min" else max(nums)
    if agg == "first":
        return values[0] if values else None
    if agg == "last":
        return values[-1] if values else None
    if agg == "distinct_count":
        return len({_canon(v) for v in values})
    if agg == "most_frequent":
        tally: dict[str, list[Any]] = {}
        for v in values:
            key = _canon(v)
            if key in tally:
                tally[key][0] += 1
            else:
                tally[key] = [1, _tie_key(v, key), v]
        if not tally:
            return None
        return min(tally.values(), key=lambda x: (-x[0], x[1]))[2]
    raise ValueError(f"computed trait {trait.name!r}: unknown aggregation {agg!r}")


def compute_trait(trait: ComputedTrait, history: ProfileHistory, at: int) -> Any:
    """The computed trait's value as of `at` (None when no value; counts give 0)."""
    return _compute(trait, history, at, at)


# --- next change --------------------------------------------------------------------------


def _boundaries(
    event: str,
    where: tuple[Comparison, ...],
    window: Window,
    h: ProfileHistory,
    at: int,
    out: set[int],
) -> None:
    """Add every instant > `at` where an existing matching event crosses the window's edge.

    An After window has none: its anchor and bound move only with new events (see `ast.py`).
    """
    if isinstance(window, Ever | After):
        return
    s = h.series(event)
    times, evs = s.times, s.events
    hi = bisect_right(times, at)
    if isinstance(window, Within):
        d = window.duration.micros
        lo = bisect_right(times, at - d)
        out.update(times[i] + d for i in range(lo, hi) if not where or _where_ok(evs[i], where))
    elif isinstance(window, Between):
        older, newer = window.older.micros, window.newer.micros
        for i in range(bisect_left(times, at - older), hi):
            if where and not _where_ok(evs[i], where):
                continue
            ts = times[i]
            out.add(ts + older + 1)
            if ts + newer > at:
                out.add(ts + newer)
    elif isinstance(window, Before):
        d = window.duration.micros
        lo = bisect_left(times, at - d)
        out.update(times[i] + d + 1 for i in range(lo, hi) if not where or _where_ok(evs[i], where))


def _collect(
    c: Condition,
    h: ProfileHistory,
    at: int,
    project: SegmentProject,
    out: set[int],
    seen: set[str],
) -> None:
    """Gather candidate change instants for every event-driven leaf of the condition tree."""
    if isinstance(c, EventCondition):
        _boundaries(c.event, c.where, c.window, h, at, out)
    elif isinstance(c, All | AnyOf):
        for x in c.conditions:
            _collect(x, h, at, project, out, seen)
    elif isinstance(c, Not):
        _collect(c.condition, h, at, project, out, seen)
    elif isinstance(c, TraitCondition):
        name = c.comparison.field
        key = name if name in project.traits else name.partition(".")[0]
        trait = project.traits.get(key)
        if trait is not None and "trait:" + key not in seen:
            seen.add("trait:" + key)
            _boundaries(trait.event, trait.where, trait.window, h, at, out)
    elif isinstance(c, SegmentRef) and c.name not in seen:
        seen.add(c.name)
        _collect(project.segments[c.name].condition, h, at, project, out, seen)


def next_change(
    condition: Condition, history: ProfileHistory, at: int, project: SegmentProject
) -> int | None:
    """The first instant > `at` where the result flips with no new event; None if it never does."""
    candidates: set[int] = set()
    _collect(condition, history, at, project, candidates, set())
    if not candidates:
        return None
    base = _eval(condition, history, at, at, project)
    for t in sorted(candidates):
        if t > at and _eval(condition, history, t, at, project) != base:
            return t
    return None
