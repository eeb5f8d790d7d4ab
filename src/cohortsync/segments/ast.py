"""The segment language's typed AST: frozen dataclasses, each carrying its source position.

Semantics, shared by every back end (the SQL compiler and the Python evaluator must agree):
- Time is in integer microseconds since the epoch (UTC). A condition is evaluated "as of" an
  instant `at`: only events with timestamp <= at exist.
- Windows over an event's timestamp `ts`:
  `Within(d)`: at - d < ts <= at.
  `Between(older, newer)` (older > newer): at - older <= ts <= at - newer.
  `Before(d)`: ts < at - d.
  `After(event, where, within)` (written `after: {event: E, where: …}` with an optional
  `within: D`): the anchor is the latest event named E matching `where` with anchor_ts <= at;
  counted are the events with anchor_ts < ts <= at, and with `within: D` also
  ts <= anchor_ts + D, so anchor_ts < ts <= min(anchor_ts + D, at). When no such anchor exists
  the whole EventCondition is False, whatever its count. As events after `at` do not exist,
  its answer changes only with new events (a later anchor moves the window), never with time.
  `Since(event)` (`since: E`) is `After(E)`: no filter on the anchor, no `within`.
  In YAML, `within:` beside `after:` is that bound after the anchor, not "in the last D"; no
  other window key goes with `after:` (`between`, `before`, `since` beside it are errors: two
  windows are two conditions in `all: [...]`).
  `Ever()`: any ts <= at.
- `where` filters compare an event property (top-level key of `properties`; dotted names reach
  into nested objects) with a literal. A missing property makes every operator False except
  `exists` (`exists: false` is True when missing). Numbers compare as numbers (bools are not
  numbers; ints and floats compare by value, as doubles in SQL), strings as strings (by code
  point), booleans only with `eq`/`ne`. `eq`, `gt`, `gte`, `lt`, `lte` and `contains` are False
  on a type mismatch (and `eq null` is always False: null is missing). `contains` is substring
  on strings. `in` takes a list and holds when the value `eq`s one element.
  `ne` and `not_in` are the exact complements of `eq` and `in` over PRESENT values: True when
  the property is present and equal to the literal / to no element, where values of different
  types are never equal (`5 ne "5"`, `5 not_in ["shoes"]` are True); False when missing.
- `count` (default `gte 1`) compares the number of matching events with N.
- `TraitCondition` compares a profile trait (identify or computed) with the same operators;
  a missing trait is False except for `exists: false` (and `ne`/`not_in` need it present).
- Computed traits aggregate a property over matching events: `count` (0 when none),
  `distinct_count` (0 when none), `sum`/`avg`/`min`/`max` over numeric values (the SQL back end
  yields doubles, the evaluator keeps ints: equal as numbers), `first`/`last` (value of the
  earliest/latest event; ties on timestamp: `first` takes the smallest message_id, `last` the
  largest), `most_frequent` (values are distinct by JSON value, so 5, 5.0 and "5" are three
  values; ties go to the smallest value: numbers by value, then strings by code point, then
  booleans (false first), then anything else, finally by JSON text); all but the counts are
  None when no value exists.
- A JSON null counts as missing, in properties, nested objects and identify traits alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OPERATORS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "contains", "exists")
AGGREGATIONS = (
    "count", "sum", "avg", "min", "max", "first", "last", "distinct_count", "most_frequent",
)  # fmt: skip
US_PER = {"m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000, "w": 604_800_000_000}


@dataclass(frozen=True)
class Position:
    """Where a node was written: for `cohortsync.yml:LINE: …` errors."""

    file: str
    line: int


@dataclass(frozen=True)
class Duration:
    """A length of time as written (`6h`), kept in microseconds."""

    text: str
    micros: int


@dataclass(frozen=True)
class Comparison:
    """`prop OP value` (or `trait OP value`)."""

    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class Ever:
    """No window: any time up to `at`."""


@dataclass(frozen=True)
class Within:
    """In the last `duration`: at - duration < ts <= at."""

    duration: Duration


@dataclass(frozen=True)
class Between:
    """From `older` to `newer` ago, both ends included: at - older <= ts <= at - newer."""

    older: Duration
    newer: Duration


@dataclass(frozen=True)
class Before:
    """More than `duration` ago: ts < at - duration."""

    duration: Duration


@dataclass(frozen=True)
class After:
    """Strictly after the anchor, the latest `event` matching `where` at or before `at`, and
    with `within` at most that long after it: anchor_ts < ts <= min(anchor_ts + within, at)."""

    event: str
    where: tuple[Comparison, ...] = ()
    within: Duration | None = None


Since = After
"""`since: E` is the anchor with no filter and no bound: `After(E)`."""

Window = Ever | Within | Between | Before | After


@dataclass(frozen=True)
class EventCondition:
    """The profile has `count OP n` events named `event` matching `where` inside `window`."""

    event: str
    where: tuple[Comparison, ...] = ()
    window: Window = Ever()
    count_op: str = "gte"
    count: int = 1
    position: Position | None = None


@dataclass(frozen=True)
class TraitCondition:
    """A profile trait (set by identify or computed) compared with a value."""

    comparison: Comparison
    position: Position | None = None


@dataclass(frozen=True)
class HasIdentifier:
    """The profile holds at least one identifier of `kind` (email, phone, user_id, …)."""

    kind: str
    position: Position | None = None


@dataclass(frozen=True)
class SegmentRef:
    """Membership of another segment."""

    name: str
    position: Position | None = None


@dataclass(frozen=True)
class All:
    """Every condition holds."""

    conditions: tuple[Condition, ...]
    position: Position | None = None


@dataclass(frozen=True)
class AnyOf:
    """At least one condition holds (`any:` in YAML)."""

    conditions: tuple[Condition, ...]
    position: Position | None = None


@dataclass(frozen=True)
class Not:
    """The condition does not hold."""

    condition: Condition
    position: Position | None = None


Condition = EventCondition | TraitCondition | HasIdentifier | SegmentRef | All | AnyOf | Not


@dataclass(frozen=True)
class ComputedTrait:
    """`NAME: {event: E, AGG: PROP, where: …, window}`: a trait computed from events."""

    name: str
    event: str
    aggregation: str
    prop: str | None
    where: tuple[Comparison, ...] = ()
    window: Window = Ever()
    position: Position | None = None


@dataclass(frozen=True)
class Segment:
    """A named condition, with its description."""

    name: str
    condition: Condition
    description: str | None = None
    position: Position | None = None


@dataclass(frozen=True)
class Audience:
    """A segment published under a locked name, minus exclusions, with an optional holdout."""

    name: str
    segment: str
    exclude: tuple[str, ...] = ()
    holdout_percent: float | None = None
    refresh: str = "1h"
    identifiers: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()
    owner: str | None = None
    description: str | None = None
    version: int = 1
    """Raised by hand when the logic changes on purpose (`cohortsync.lock` holds the last)."""
    retired: bool = False
    """Kept only to be emptied downstream; then it can be removed from the project."""
    exits: str = "cadence"
    """`realtime`: members leave the moment an event makes the rule false, whatever `refresh`."""
    offer: str | None = None
    """What the audience is shown (`none`, `free_shipping`, `discount_15`, …), for the lint."""
    lint_ignore: tuple[str, ...] = ()
    """Lint codes not reported for this audience (`lint: {ignore: [CODE]}`)."""
    position: Position | None = None

    @property
    def condition(self) -> All:
        """The audience's one rule: in its segment and in none of the excluded ones. Every
        path (the SQL compiler, batch compute, real time) decides membership by it; the
        holdout is a flag on members, not part of the rule. A retired audience's rule never
        holds (in its segment and not in it), so every member leaves it everywhere."""
        if self.retired:
            return All((SegmentRef(self.segment), Not(SegmentRef(self.segment))))
        return All((SegmentRef(self.segment), *(Not(SegmentRef(x)) for x in self.exclude)))


@dataclass(frozen=True)
class SegmentProject:
    """Every computed trait, segment and audience of a project, bound and checked."""

    traits: dict[str, ComputedTrait]
    segments: dict[str, Segment]
    audiences: dict[str, Audience]
