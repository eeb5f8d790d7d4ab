"""Parse `traits:`, `segments:` and `audiences:` of the project file into the bound, checked AST."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cohortsync.errors import ConfigError
from cohortsync.segments.ast import (
    AGGREGATIONS,
    OPERATORS,
    US_PER,
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
    Position,
    Segment,
    SegmentProject,
    SegmentRef,
    TraitCondition,
    Window,
    Within,
)
from cohortsync.segments.names import IDENTIFIER_KINDS, event_key
from cohortsync.segments.schedule import valid_refresh
from cohortsync.segments.yaml_lines import item_line, key_line, node_line, plain, suggest

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DURATION = re.compile(r"^(\d+)([mhdw])$")
_FUZZY = re.compile(r"\s|[A-Za-z]{2,}")
_KINDS = ("event", "trait", "has", "segment", "all", "any", "not")
_WINDOWS = ("within", "between", "before", "since", "after")
_EVENT_KEYS = ("event", "where", *_WINDOWS, "count")
_COUNT_OPS = ("eq", "ne", "gt", "gte", "lt", "lte")
_AUDIENCE_KEYS = (
    "segment", "exclude", "holdout", "refresh", "identifiers", "destinations", "owner",
    "description", "version", "retired", "exits", "offer", "lint",
)  # fmt: skip
_EXITS = ("cadence", "realtime")
_FIX_DURATION = "use <n>m, <n>h, <n>d or <n>w, e.g. 6h"


def parse_document(document: Any, file_display: str) -> SegmentProject:
    """Parse and bind from a ruamel round-trip document (a `CommentedMap`)."""
    return _Parser(document, file_display).run()


class _Parser:
    """One pass over a document: parse everything, then bind references."""

    def __init__(self, document: Any, file: str) -> None:
        self.doc = document if isinstance(document, Mapping) else {}
        self.file = file
        identity = self.doc.get("identity")
        kinds = set(IDENTIFIER_KINDS)
        if isinstance(identity, Mapping):
            kinds.update(str(k) for k in [identity.get("primary")] if isinstance(k, str))
            kinds.update(str(k) for k in identity.get("secondary") or () if isinstance(k, str))
            kinds.update(str(k) for k in identity.get("limits") or {})
        self.kinds = sorted(kinds)
        self.refs: dict[str, list[SegmentRef]] = {}
        self.current = ""

    def fail(self, message: str, line: int | None) -> ConfigError:
        """An error located in this file."""
        return ConfigError(message, self.file, line)

    def section(self, key: str) -> tuple[Mapping[str, Any], int]:
        """A top-level mapping (empty when absent) and the line of its key."""
        value = self.doc.get(key)
        line = key_line(self.doc, key, 1)
        if value is None:
            return {}, line
        if not isinstance(value, Mapping):
            raise self.fail(f"{key}: must be a mapping of name: definition", line)
        return value, line

    def name(self, what: str, name: Any, line: int) -> str:
        """A checked lower_snake_case name."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.fail(
                f"{what} name {name!r} must be lower_snake_case (letters, digits, _), "
                "e.g. cart_abandon",
                line,
            )
        return name

    def run(self) -> SegmentProject:
        """Parse traits, segments and audiences, then bind segment references."""
        traits_map, _ = self.section("traits")
        traits: dict[str, ComputedTrait] = {}
        for key, node in traits_map.items():
            line = key_line(traits_map, key, 1)
            name = self.name("trait", key, line)
            traits[name] = self.trait(name, node, line)
        segments_map, _ = self.section("segments")
        segments: dict[str, Segment] = {}
        for key, node in segments_map.items():
            line = key_line(segments_map, key, 1)
            name = self.name("segment", key, line)
            self.refs[name] = []
            self.current = name
            segments[name] = self.segment(name, node, line)
        self.bind(segments)
        audiences_map, _ = self.section("audiences")
        audiences: dict[str, Audience] = {}
        for key, node in audiences_map.items():
            line = key_line(audiences_map, key, 1)
            name = self.name("audience", key, line)
            audiences[name] = self.audience(name, node, line, segments)
        return SegmentProject(traits=traits, segments=segments, audiences=audiences)

    # -- binding ---------------------------------------------------------------------------

    def bind(self, segments: dict[str, Segment]) -> None:
        """Unknown segment references and cycles among segments are errors."""
        known = list(segments)
        for refs in self.refs.values():
            for ref in refs:
                if ref.name not in segments:
                    raise self.fail(
                        f"unknown segment {ref.name!r}{suggest(ref.name, known)}: "
                        "define it under segments: or fix the name",
                        ref.position.line if ref.position else None,
                    )
        done: set[str] = set()
        for start in segments:
            self.visit(start, [], done)

    def visit(self, name: str, path: list[str], done: set[str]) -> None:
        """Depth-first search for a cycle through `name`."""
        if name in done:
            return
        for ref in self.refs[name]:
            if ref.name in path or ref.name == name:
                cycle = [*path[path.index(ref.name) :], name] if ref.name in path else [name]
                shown = " -> ".join([*cycle, ref.name])
                raise self.fail(
                    f"segments refer to each other in a cycle ({shown}): "
                    "a segment cannot depend on itself; remove one of these references",
                    ref.position.line if ref.position else None,
                )
            self.visit(ref.name, [*path, name], done)
        done.add(name)

    # -- segments and conditions -----------------------------------------------------------

    def segment(self, name: str, node: Any, line: int) -> Segment:
        """`NAME: CONDITION` or `NAME: {description: ..., CONDITION KEYS}`."""
        if not isinstance(node, Mapping):
            raise self.fail(
                f"segment {name} must be a condition such as {{event: order_completed}}", line
            )
        description = None
        if "description" in node:
            description = self.text(node, "description", line)
            rest = {k: v for k, v in node.items() if k != "description"}
            if not rest:
                raise self.fail(f"segment {name} has a description but no condition", line)
        return Segment(
            name=name,
            condition=self.condition(node, node_line(node, line), skip=("description",)),
            description=description,
            position=Position(self.file, line),
        )

    def condition(self, node: Any, line: int, skip: tuple[str, ...] = ()) -> Condition:
        """One condition mapping, dispatched on its kind key."""
        if not isinstance(node, Mapping):
            raise self.fail(
                f"a condition must be a mapping with one of {', '.join(_KINDS)}, "
                "e.g. {event: order_completed, within: 30d}",
                line,
            )
        line = node_line(node, line)
        kinds = [k for k in node if k in _KINDS]
        if not kinds:
            keys = ", ".join(str(k) for k in node if k not in skip)
            raise self.fail(
                f"unknown condition ({keys}): a condition needs one of {', '.join(_KINDS)}", line
            )
        if len(kinds) > 1:
            raise self.fail(
                f"a condition has one of {', '.join(_KINDS)} but this one has "
                f"{' and '.join(kinds)}: combine them with all: [...] or any: [...]",
                key_line(node, kinds[1], line),
            )
        kind = kinds[0]
        pos = Position(self.file, line)
        if kind == "event":
            return self.event(node, line, skip)
        if kind == "trait":
            return self.trait_condition(node, line, skip)
        self.only(node, (kind, *skip), line, f"a {kind}: condition")
        value = node[kind]
        vline = key_line(node, kind, line)
        if kind == "has":
            if value not in self.kinds:
                raise self.fail(
                    f"unknown identifier kind {value!r}: use one of {', '.join(self.kinds)}",
                    vline,
                )
            return HasIdentifier(kind=str(value), position=pos)
        if kind == "segment":
            if not isinstance(value, str) or not value:
                raise self.fail("segment: takes a segment name, e.g. segment: vip", vline)
            ref = SegmentRef(name=str(value), position=Position(self.file, vline))
            self.refs[self.current].append(ref)
            return ref
        if kind == "not":
            return Not(condition=self.condition(value, vline), position=pos)
        if not isinstance(value, list) or not value:
            raise self.fail(
                f"{kind}: takes a non-empty list of conditions, e.g. {kind}: [...]", vline
            )
        parts = tuple(self.condition(v, item_line(value, i, vline)) for i, v in enumerate(value))
        return All(parts, pos) if kind == "all" else AnyOf(parts, pos)

    def only(self, node: Mapping[str, Any], allowed: tuple[str, ...], line: int, what: str) -> None:
        """Reject keys outside `allowed`, listing the allowed ones."""
        for key in node:
            if key not in allowed:
                raise self.fail(
                    f"unknown key {key!r} in {what}: remove or rename it; "
                    f"allowed here: {', '.join(allowed)}",
                    key_line(node, key, line),
                )

    def text(self, node: Mapping[str, Any], key: str, line: int) -> str:
        """A required string value."""
        value = node[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{key}: must be a non-empty text", key_line(node, key, line))
        return str(value)

    def event_name(self, node: Mapping[str, Any], key: str, line: int) -> str:
        """An event name, normalised to its snake_case key."""
        value = node[key]
        name = event_key(value) if isinstance(value, str) else ""
        if not name:
            raise self.fail(
                f"{key}: takes an event name, e.g. {key}: order_completed",
                key_line(node, key, line),
            )
        return name

    def event(self, node: Mapping[str, Any], line: int, skip: tuple[str, ...]) -> EventCondition:
        """`{event: NAME, where: ..., WINDOW, count: {OP: N}}`."""
        self.only(node, (*_EVENT_KEYS, *skip), line, "an event condition")
        name = self.event_name(node, "event", line)
        window = self.window(node, line, _WINDOWS)
        if isinstance(window, After) and window.event == name and not window.where:
            if "since" in node:
                raise self.fail(
                    f"since: names the event itself ({name}): use within: or between: instead",
                    key_line(node, "since", line),
                )
            raise self.fail(
                f"after: {{event: {name}}} is the latest {name} itself, so no {name} can "
                f"follow it: give the anchor a filter, e.g. after: {{event: {name}, where: "
                "{campaign_id: c1}}, or use within: or between: instead",
                key_line(node, "after", line),
            )
        count_op, count = "gte", 1
        if "count" in node:
            count_op, count = self.count(node["count"], key_line(node, "count", line))
        return EventCondition(
            event=name,
            where=self.where(node, line),
            window=window,
            count_op=count_op,
            count=count,
            position=Position(self.file, line),
        )

    def count(self, value: Any, line: int) -> tuple[str, int]:
        """`count: {OP: N}`."""
        if not isinstance(value, Mapping) or len(value) != 1:
            raise self.fail(
                "count: takes one operator and a number, e.g. count: {gte: 3} for at least 3 "
                "or count: {eq: 0} for none",
                line,
            )
        ((op, n),) = value.items()
        if op not in _COUNT_OPS:
            raise self.fail(
                f"unknown count operator {op!r}: use one of {', '.join(_COUNT_OPS)}",
                key_line(value, op, line),
            )
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise self.fail(
                f"count: {op}: takes a whole number of events (0 or more), got {n!r}",
                key_line(value, op, line),
            )
        return str(op), int(n)

    def where(self, node: Mapping[str, Any], line: int) -> tuple[Comparison, ...]:
        """`where: {PROP: VALUE}` or `{PROP: {OP: VALUE}}`; several props and ops are ANDed."""
        if "where" not in node:
            return ()
        value, wline = node["where"], key_line(node, "where", line)
        if not isinstance(value, Mapping) or not value:
            raise self.fail("where: takes a mapping of property: value, e.g. {plan: pro}", wline)
        out: list[Comparison] = []
        for prop, test in value.items():
            pline = key_line(value, prop, wline)
            if not isinstance(prop, str) or not prop:
                raise self.fail(f"where: property name {prop!r} must be text", pline)
            if isinstance(test, Mapping):
                if not test:
                    raise self.fail(f"where: {prop}: needs an operator, e.g. {{gte: 10}}", pline)
                for op, operand in test.items():
                    out.append(self.comparison(prop, op, operand, key_line(test, op, pline)))
            else:
                out.append(self.comparison(prop, "eq", test, pline))
        return tuple(out)

    def comparison(self, field: str, op: Any, value: Any, line: int) -> Comparison:
        """`field OP value`, with the value's type checked against the operator."""
        if op not in OPERATORS:
            raise self.fail(
                f"unknown operator {op!r} for {field}: use one of {', '.join(OPERATORS)}", line
            )
        ok: bool
        if op in ("in", "not_in"):
            ok = isinstance(value, list) and all(not isinstance(v, Mapping | list) for v in value)
            hint = f"{op}: takes a list of values, e.g. {op}: [a, b]"
        elif op in ("gt", "gte", "lt", "lte"):
            ok = isinstance(value, int | float | str) and not isinstance(value, bool)
            hint = f"{op}: takes a number (or text), e.g. {op}: 100"
        elif op == "contains":
            ok = isinstance(value, str)
            hint = "contains: takes text, e.g. contains: sale"
        elif op == "exists":
            ok = isinstance(value, bool)
            hint = "exists: takes true or false"
        else:
            ok = not isinstance(value, Mapping | list)
            hint = (
                f"{op}: takes a single value; for several values write "
                f"{'in' if op == 'eq' else 'not_in'}: [a, b]"
            )
        if not ok:
            raise self.fail(f"bad value {value!r} for {field}: {hint}", line)
        return Comparison(field=field, op=str(op), value=plain(value))

    def trait_condition(
        self, node: Mapping[str, Any], line: int, skip: tuple[str, ...]
    ) -> TraitCondition:
        """`{trait: NAME, OP: VALUE}` over identify or computed traits."""
        self.only(node, ("trait", *OPERATORS, *skip), line, "a trait condition")
        name = node["trait"]
        if not isinstance(name, str) or not name:
            raise self.fail("trait: takes a trait name, e.g. trait: ltv", line)
        ops = [k for k in node if k in OPERATORS]
        if len(ops) != 1:
            raise self.fail(
                f"a trait condition takes exactly one operator (found {len(ops)}), e.g. "
                "{trait: ltv, gte: 500}; combine several with all: [...]",
                key_line(node, ops[1], line) if ops else line,
            )
        op = ops[0]
        comparison = self.comparison(str(name), op, node[op], key_line(node, op, line))
        return TraitCondition(comparison=comparison, position=Position(self.file, line))

    # -- windows and durations -------------------------------------------------------------

    def window(self, node: Mapping[str, Any], line: int, allowed: tuple[str, ...]) -> Window:
        """At most one of within, between, before, since, or after with an optional within;
        none means ever."""
        found = [k for k in node if k in _WINDOWS]
        if "after" in found:
            return self.after(node, line, found, allowed)
        if len(found) > 1:
            hint = ""
            if set(found) == {"since", "within"}:
                hint = (
                    f"; for events at most {node['within']} after the latest "
                    f"{node['since']}, write after: {{event: {node['since']}}} with within:"
                )
            raise self.fail(
                f"one window per event: found {' and '.join(found)}; keep one, "
                f"or split into all: [...] of two conditions{hint}",
                key_line(node, found[1], line),
            )
        if not found:
            return Ever()
        key = found[0]
        kline = key_line(node, key, line)
        if key not in allowed:
            raise self.fail(f"{key}: is not allowed here: use one of {', '.join(allowed)}", kline)
        value = node[key]
        if key == "since":
            return After(event=self.event_name(node, "since", line))
        if key != "between":
            duration = self.duration(value, key, kline)
            return Within(duration) if key == "within" else Before(duration)
        if not isinstance(value, list) or len(value) != 2:
            raise self.fail(
                "between: takes [older, newer], older first, e.g. between: [35d, 21d]", kline
            )
        older = self.duration(value[0], key, kline)
        newer = self.duration(value[1], key, kline, zero=True)
        if older.micros <= newer.micros:
            raise self.fail(
                f"between: [{older.text}, {newer.text}] must put the older end first, "
                f"e.g. between: [{newer.text}, {older.text}]"
                if older.micros < newer.micros
                else f"between: [{older.text}, {newer.text}] is empty: the older end must be "
                "further back than the newer, e.g. [35d, 21d]",
                kline,
            )
        return Between(older=older, newer=newer)

    def after(
        self, node: Mapping[str, Any], line: int, found: list[str], allowed: tuple[str, ...]
    ) -> After:
        """`after: {event: E, where: ...}`, with `within: D` bounding how long after it."""
        aline = key_line(node, "after", line)
        if "after" not in allowed:
            raise self.fail(f"after: is not allowed here: use one of {', '.join(allowed)}", aline)
        others = [k for k in found if k not in ("after", "within")]
        if "since" in others:
            raise self.fail(
                "after: and since: in one condition: both set the anchor; keep one "
                "(since: E is after: {event: E})",
                key_line(node, "since", line),
            )
        if others:
            raise self.fail(
                f"after: and {others[0]}: in one condition: after: takes only within: (how long "
                "after the anchor events count); for a second window, split into all: [...] of "
                "two conditions",
                key_line(node, others[0], line),
            )
        anchor = node["after"]
        if not isinstance(anchor, Mapping) or "event" not in anchor:
            raise self.fail(
                "after: takes the anchor event and an optional filter, e.g. after: "
                "{event: email_delivered, where: {campaign_id: cart_1}}",
                aline,
            )
        aline = node_line(anchor, aline)
        if "within" in anchor:
            raise self.fail(
                "within: goes beside after:, not inside its anchor, e.g. {event: order_completed, "
                "after: {event: email_delivered}, within: 24h}",
                key_line(anchor, "within", aline),
            )
        self.only(anchor, ("event", "where"), aline, "the after: anchor")
        within = None
        if "within" in node:
            within = self.duration(node["within"], "within", key_line(node, "within", line))
        return After(
            event=self.event_name(anchor, "event", aline),
            where=self.where(anchor, aline),
            within=within,
        )

    def duration(self, value: Any, key: str, line: int, zero: bool = False) -> Duration:
        """`<n>m`, `<n>h`, `<n>d` or `<n>w`."""
        text = value.strip() if isinstance(value, str) else value
        match = _DURATION.match(text) if isinstance(text, str) else None
        if match is None:
            if isinstance(text, str) and _FUZZY.search(text):
                raise self.fail(
                    f"{key}: {text} is not an explicit window: windows must be explicit "
                    f"durations such as 7d ({_FIX_DURATION})",
                    line,
                )
            raise self.fail(f"bad duration {value!r} for {key}: {_FIX_DURATION}", line)
        amount = int(match.group(1))
        if amount == 0 and not zero:
            raise self.fail(f"{key}: {text} is zero: give a duration of at least 1m", line)
        return Duration(text=str(text), micros=amount * US_PER[match.group(2)])

    # -- computed traits -------------------------------------------------------------------

    def trait(self, name: str, node: Any, line: int) -> ComputedTrait:
        """`NAME: {event: E, AGG: PROP, where: ..., within|between|before: ...}`."""
        if not isinstance(node, Mapping) or "event" not in node:
            raise self.fail(
                f"computed trait {name} needs event: and an aggregation, "
                "e.g. {event: order_completed, sum: revenue}",
                line,
            )
        line = node_line(node, line)
        aggs = [k for k in node if k in AGGREGATIONS]
        allowed = ("event", "where", "within", "between", "before", *AGGREGATIONS)
        unknown = [k for k in node if k not in allowed]
        if not aggs and len(unknown) == 1 and unknown[0] not in _WINDOWS:
            raise self.fail(
                f"unknown aggregation {unknown[0]!r} in trait {name}: use one of "
                f"{', '.join(AGGREGATIONS)}",
                key_line(node, unknown[0], line),
            )
        self.only(node, allowed, line, f"computed trait {name}")
        if len(aggs) != 1:
            raise self.fail(
                f"computed trait {name} takes exactly one aggregation "
                f"({', '.join(AGGREGATIONS)}), found {len(aggs)}",
                key_line(node, aggs[1], line) if aggs else line,
            )
        agg = aggs[0]
        value, aline = node[agg], key_line(node, agg, line)
        prop: str | None
        if agg == "count":
            if value is not True:
                raise self.fail("count: takes true (count: true counts matching events)", aline)
            prop = None
        elif isinstance(value, str) and value:
            prop = str(value)
        else:
            raise self.fail(f"{agg}: takes a property name, e.g. {agg}: revenue", aline)
        return ComputedTrait(
            name=name,
            event=self.event_name(node, "event", line),
            aggregation=agg,
            prop=prop,
            where=self.where(node, line),
            window=self.window(node, line, ("within", "between", "before")),
            position=Position(self.file, line),
        )

    # -- audiences -------------------------------------------------------------------------

    def audience(self, name: str, node: Any, line: int, segments: dict[str, Segment]) -> Audience:
        """`NAME: {segment, exclude, holdout, refresh, identifiers, destinations, owner, ...}`."""
        if not isinstance(node, Mapping) or "segment" not in node:
            raise self.fail(f"audience {name} needs segment: NAME, e.g. segment: lapsed", line)
        self.only(node, _AUDIENCE_KEYS, line, f"audience {name}")
        segment = self.segment_name(node["segment"], key_line(node, "segment", line), segments)
        exclude = self.names(node, "exclude", line)
        for i, excluded in enumerate(exclude):
            eline = item_line(node["exclude"], i, key_line(node, "exclude", line))
            self.segment_name(excluded, eline, segments)
            if excluded == segment:
                raise self.fail(f"audience {name} excludes its own segment {segment}", eline)
        holdout = None
        if "holdout" in node:
            holdout = self.holdout(node["holdout"], key_line(node, "holdout", line))
        refresh = "1h"
        if "refresh" in node:
            refresh = self.refresh(node["refresh"], key_line(node, "refresh", line))
        identifiers = self.names(node, "identifiers", line)
        for kind in identifiers:
            if kind not in self.kinds:
                raise self.fail(
                    f"unknown identifier kind {kind!r}: use one of {', '.join(self.kinds)}",
                    key_line(node, "identifiers", line),
                )
        return Audience(
            name=name,
            segment=segment,
            exclude=exclude,
            holdout_percent=holdout,
            refresh=refresh,
            identifiers=identifiers,
            destinations=self.names(node, "destinations", line),
            owner=self.text(node, "owner", line) if "owner" in node else None,
            description=self.text(node, "description", line) if "description" in node else None,
            version=self.version(node, line),
            retired=self.flag(node, "retired", line),
            exits=self.exits(node, refresh, line),
            offer=self.text(node, "offer", line) if "offer" in node else None,
            lint_ignore=self.lint_ignore(node, line),
            position=Position(self.file, line),
        )

    def version(self, node: Mapping[str, Any], line: int) -> int:
        """`version: N`, a positive whole number (1 when absent)."""
        value = node.get("version", 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(
                f"version must be a whole number from 1, got {value!r}: raise it by one when "
                "the audience's logic changes on purpose",
                key_line(node, "version", line),
            )
        return value

    def flag(self, node: Mapping[str, Any], key: str, line: int) -> bool:
        """`KEY: true|false` (false when absent)."""
        value = node.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(
                f"{key} must be true or false, got {value!r}", key_line(node, key, line)
            )
        return value

    def exits(self, node: Mapping[str, Any], refresh: str, line: int) -> str:
        """`exits: realtime|cadence`; real-time audiences exit in real time anyway."""
        value = node.get("exits", "realtime" if refresh == "realtime" else "cadence")
        if value not in _EXITS:
            raise self.fail(
                f"exits must be realtime or cadence, got {value!r}: realtime makes members "
                "leave the moment an event makes the rule false",
                key_line(node, "exits", line),
            )
        if refresh == "realtime" and value != "realtime":
            raise self.fail(
                "exits: cadence on an audience with refresh: realtime: its exits are real time "
                "already; remove exits:",
                key_line(node, "exits", line),
            )
        return str(value)

    def lint_ignore(self, node: Mapping[str, Any], line: int) -> tuple[str, ...]:
        """`lint: {ignore: [CODE, ...]}`."""
        if "lint" not in node:
            return ()
        value = node["lint"]
        lline = key_line(node, "lint", line)
        if not isinstance(value, Mapping):
            raise self.fail("lint: takes {ignore: [CODE]}, e.g. lint: {ignore: [CS104]}", lline)
        self.only(value, ("ignore",), lline, "lint")
        return self.names(value, "ignore", lline)

    def segment_name(self, value: Any, line: int, segments: dict[str, Segment]) -> str:
        """A reference to a defined segment."""
        if not isinstance(value, str) or value not in segments:
            raise self.fail(
                f"unknown segment {value!r}{suggest(str(value), list(segments))}: "
                "define it under segments: or fix the name",
                line,
            )
        return value

    def names(self, node: Mapping[str, Any], key: str, line: int) -> tuple[str, ...]:
        """A list of names (a single name is accepted as a list of one)."""
        if key not in node:
            return ()
        value = node[key]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
            raise self.fail(
                f"{key}: takes a list of names, e.g. {key}: [a, b]", key_line(node, key, line)
            )
        return tuple(str(v) for v in items)

    def holdout(self, value: Any, line: int) -> float:
        """`holdout: {percent: P}` with 0 < P < 100."""
        if not isinstance(value, Mapping) or "percent" not in value:
            raise self.fail("holdout: takes {percent: P}, e.g. holdout: {percent: 10}", line)
        self.only(value, ("percent",), line, "holdout")
        percent = value["percent"]
        pline = key_line(value, "percent", line)
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise self.fail(f"holdout percent must be a number, got {percent!r}", pline)
        if not 0 < percent < 100:
            raise self.fail(
                f"holdout percent must be between 0 and 100 (exclusive), got {percent}, "
                "e.g. percent: 10",
                pline,
            )
        return float(percent)

    def refresh(self, value: Any, line: int) -> str:
        """`realtime`, `15m`, `1h`, `1d` or a 5-field cron expression."""
        text = value.strip() if isinstance(value, str) else ""
        if valid_refresh(text):
            return text
        raise self.fail(
            f"bad refresh {value!r}: use realtime, 15m, 1h, 1d or a 5-field cron expression "
            "such as '0 6 * * *'",
            line,
        )
