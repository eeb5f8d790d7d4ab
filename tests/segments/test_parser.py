"""The segment parser: every grammar form to its AST, and every mistake to `file:line: fix`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from cohortsync.config.loader import load_project, parse_segments
from cohortsync.errors import ConfigError
from cohortsync.segments.ast import (
    After,
    All,
    AnyOf,
    Audience,
    Before,
    Between,
    Comparison,
    ComputedTrait,
    Duration,
    EventCondition,
    Ever,
    HasIdentifier,
    Not,
    Position,
    Segment,
    SegmentProject,
    SegmentRef,
    Since,
    TraitCondition,
    Within,
)
from cohortsync.segments.parser import parse_document

F = "cohortsync.yml"
H = 3_600_000_000
D = 24 * H


def parse(text: str) -> SegmentProject:
    """Parse project-file text as the loader would (round-trip YAML, lines kept)."""
    return parse_document(YAML(typ="rt").load(text), F)


def at(line: int) -> Position:
    """A position in the test file."""
    return Position(F, line)


def condition(text: str) -> Any:
    """The condition of the single segment `s` in a `segments:` block."""
    return parse("segments:\n  s: " + text + "\n").segments["s"].condition


def test_event_forms() -> None:
    assert condition("{event: Order Completed}") == EventCondition(
        "order_completed", position=at(2)
    )
    assert condition("{event: x, within: 6h}") == EventCondition(
        "x", window=Within(Duration("6h", 6 * H)), position=at(2)
    )
    assert condition("{event: x, between: [35d, 21d]}") == EventCondition(
        "x", window=Between(Duration("35d", 35 * D), Duration("21d", 21 * D)), position=at(2)
    )
    assert condition("{event: x, before: 2w}") == EventCondition(
        "x", window=Before(Duration("2w", 14 * D)), position=at(2)
    )
    assert condition("{event: x, since: Added To Cart}") == EventCondition(
        "x", window=Since("added_to_cart"), position=at(2)
    )
    assert condition("{event: x, after: {event: y}}") == EventCondition(
        "x", window=After("y"), position=at(2)
    )
    assert Since("y") == After("y", where=(), within=None)  # since: E is after: {event: E}
    assert condition(
        "{event: Order Completed, after: {event: Email Delivered, where: {campaign_id: c1}}, "
        "within: 24h, count: {eq: 0}}"
    ) == EventCondition(
        "order_completed",
        window=After(
            "email_delivered", (Comparison("campaign_id", "eq", "c1"),), Duration("24h", D)
        ),
        count_op="eq",
        count=0,
        position=at(2),
    )
    assert condition("{event: x, within: 30m, count: {lt: 3}}") == EventCondition(
        "x", window=Within(Duration("30m", 30 * 60_000_000)), count_op="lt", count=3,
        position=at(2),
    )  # fmt: skip


def test_where_filters() -> None:
    got = condition(
        "{event: order_completed, where: {plan: pro, total: {gte: 10.5, lt: 100},"
        " tags: {in: [a, b]}, coupon: {exists: false}, name: {contains: sale}}}"
    )
    assert got == EventCondition(
        "order_completed",
        where=(
            Comparison("plan", "eq", "pro"),
            Comparison("total", "gte", 10.5),
            Comparison("total", "lt", 100),
            Comparison("tags", "in", ("a", "b")),
            Comparison("coupon", "exists", False),
            Comparison("name", "contains", "sale"),
        ),
        position=at(2),
    )
    assert type(got.where[1].value) is float
    assert condition("{event: x, where: {day: 2024-01-31}}").where == (
        Comparison("day", "eq", "2024-01-31"),
    )
    assert type(got.where[2].value) is int


def test_trait_has_ref_and_booleans() -> None:
    project = parse(
        """\
segments:
  base: {has: email}
  s:
    description: Nested
    all:
      - {trait: plan, ne: free}
      - any:
          - {segment: base}
          - not:
              trait: ltv
              gte: 500
"""
    )
    assert project.segments["base"] == Segment(
        "base", HasIdentifier("email", at(2)), position=at(2)
    )
    assert project.segments["s"] == Segment(
        name="s",
        description="Nested",
        position=at(3),
        condition=All(
            (
                TraitCondition(Comparison("plan", "ne", "free"), at(6)),
                AnyOf(
                    (
                        SegmentRef("base", at(8)),
                        Not(TraitCondition(Comparison("ltv", "gte", 500), at(10)), at(9)),
                    ),
                    at(7),
                ),
            ),
            at(4),
        ),
    )


def test_traits_and_audiences() -> None:
    project = parse(
        """\
identity:
  primary: email
traits:
  ltv: {event: Order Completed, sum: revenue, where: {currency: USD}, within: 365d}
  orders: {event: order_completed, count: true}
segments:
  lapsed: {event: order_completed, before: 60d}
  vip: {trait: ltv, gte: 500}
audiences:
  win_back:
    segment: lapsed
    exclude: [vip]
    holdout: {percent: 10}
    refresh: 0 6 * * mon-fri
    identifiers: [email, phone]
    destinations: [meta]
    owner: crm
    description: Bring them back
  plain: {segment: vip}
"""
    )
    assert project.traits == {
        "ltv": ComputedTrait(
            "ltv", "order_completed", "sum", "revenue",
            where=(Comparison("currency", "eq", "USD"),),
            window=Within(Duration("365d", 365 * D)), position=at(4),
        ),
        "orders": ComputedTrait("orders", "order_completed", "count", None, position=at(5)),
    }  # fmt: skip
    assert project.audiences["win_back"] == Audience(
        name="win_back", segment="lapsed", exclude=("vip",), holdout_percent=10.0,
        refresh="0 6 * * mon-fri", identifiers=("email", "phone"), destinations=("meta",),
        owner="crm", description="Bring them back", position=at(10),
    )  # fmt: skip
    assert project.audiences["plain"] == Audience("plain", "vip", position=at(19))
    assert project.segments["lapsed"].condition == EventCondition(
        "order_completed", window=Before(Duration("60d", 60 * D)), position=at(7)
    )
    assert parse("{}") == SegmentProject({}, {}, {})
    assert condition("{event: x}").window == Ever()


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("segments:\n  a: {segment: b}\n", 2, "unknown segment 'b'"),
        ("segments:\n  a:\n    all:\n      - {has: email}\n      - {segment: aa}\n", 5,
         "did you mean a?"),
        ("segments:\n  a:\n    event: x\n    wihtin: 6h\n", 4,
         "unknown key 'wihtin' in an event condition: remove or rename it; allowed here: event"),
        ("segments:\n  a: {event: x, within: 6x}\n", 2, "use <n>m, <n>h, <n>d or <n>w, e.g. 6h"),
        ("segments:\n  a: {event: x, within: 6}\n", 2, "bad duration 6 for within"),
        ("segments:\n  a:\n    event: x\n    within: recently\n", 4,
         "windows must be explicit durations such as 7d"),
        ("segments:\n  a: {event: x, before: 7 days}\n", 2,
         "windows must be explicit durations such as 7d"),
        ("segments:\n  a:\n    event: x\n    within: 6h\n    before: 2d\n", 5,
         "one window per event: found within and before"),
        ("segments:\n  a:\n    event: x\n    between: [21d, 35d]\n", 4,
         "must put the older end first, e.g. between: [35d, 21d]"),
        ("segments:\n  a: {event: x, between: [3w, 21d]}\n", 2, "is empty"),
        ("segments:\n  a: {event: x, between: [35d]}\n", 2, "between: takes [older, newer]"),
        ("segments:\n  a:\n    event: x\n    where:\n      total: {over: 3}\n", 5,
         "unknown operator 'over' for total: use one of eq, ne, in"),
        ("segments:\n  a: {event: x, where: {t: {in: 3}}}\n", 2, "in: takes a list"),
        ("segments:\n  a: {event: x, where: {t: [1, 2]}}\n", 2, "write in: [a, b]"),
        ("segments:\n  a: {event: x, count: 3}\n", 2, "count: {gte: 3}"),
        ("segments:\n  a: {event: x, count: {most: 3}}\n", 2, "unknown count operator 'most'"),
        ("segments:\n  a: {event: x, since: x}\n", 2, "since: names the event itself"),
        ("segments:\n  a: {event: x, since: y, within: 6h}\n", 2,
         "for events at most 6h after the latest y, write after: {event: y} with within:"),
        ("segments:\n  a:\n    event: x\n    after: {event: y}\n    between: [3d, 1d]\n", 5,
         "after: and between: in one condition: after: takes only within: (how long after the "
         "anchor events count); for a second window, split into all: [...]"),
        ("segments:\n  a:\n    event: x\n    before: 1d\n    after: {event: y}\n", 4,
         "after: and before: in one condition"),
        ("segments:\n  a:\n    event: x\n    after: {event: y}\n    since: y\n", 5,
         "after: and since: in one condition: both set the anchor; keep one"),
        ("segments:\n  a:\n    event: x\n    after: email_delivered\n", 4,
         "after: takes the anchor event and an optional filter, e.g. after: {event: "
         "email_delivered, where: {campaign_id: cart_1}}"),
        ("segments:\n  a:\n    event: x\n    after:\n      where: {c: 1}\n", 4,
         "after: takes the anchor event"),
        ("segments:\n  a:\n    event: x\n    after:\n      event: y\n      within: 24h\n", 6,
         "within: goes beside after:, not inside its anchor"),
        ("segments:\n  a:\n    event: x\n    after:\n      event: y\n      wher: {c: 1}\n", 6,
         "unknown key 'wher' in the after: anchor: remove or rename it; allowed here: event, "
         "where"),
        ("segments:\n  a:\n    event: x\n    after: {event: y, where: {c: {over: 1}}}\n", 4,
         "unknown operator 'over' for c"),
        ("segments:\n  a:\n    event: x\n    after: {event: y}\n    within: 0m\n", 5,
         "within: 0m is zero"),
        ("segments:\n  a:\n    event: x\n    after: {event: y}\n    within: a day\n", 5,
         "windows must be explicit durations such as 7d"),
        ("segments:\n  a: {event: x, after: {event: x}}\n", 2,
         "after: {event: x} is the latest x itself, so no x can follow it: give the anchor a "
         "filter"),
        ("traits:\n  t: {event: x, sum: a, after: {event: y}}\n", 2,
         "unknown key 'after' in computed trait t"),
        ("segments:\n  a:\n    trait: ltv\n    above: 3\n", 4, "allowed here: trait, eq"),
        ("segments:\n  a: {trait: ltv, gte: 1, lte: 5}\n", 2, "exactly one operator"),
        ("segments:\n  a: {has: emial}\n", 2, "unknown identifier kind 'emial'"),
        ("segments:\n  a: {all: []}\n", 2, "non-empty list"),
        ("segments:\n  a: {event: x, trait: y}\n", 2, "combine them with all:"),
        ("segments:\n  a: {descriptio: x}\n", 2, "a condition needs one of event, trait"),
        ("segments:\n  a: {description: x}\n", 2, "has a description but no condition"),
        ("segments:\n  Cart Abandon: {has: email}\n", 2, "must be lower_snake_case"),
        ("traits:\n  t:\n    event: x\n    average: total\n", 4,
         "unknown aggregation 'average' in trait t: use one of count, sum"),
        ("traits:\n  t: {event: x, count: revenue}\n", 2, "count: takes true"),
        ("traits:\n  t: {event: x, sum: a, max: b}\n", 2, "exactly one aggregation"),
        ("traits:\n  t: {event: x, sum: a, since: y}\n", 2,
         "unknown key 'since' in computed trait t"),
        ("traits:\n  t:\n    event: x\n    sum: a\n    within: soon\n", 5, "such as 7d"),
        ("segments:\n  s: {has: email}\naudiences:\n  a: {segment: nope}\n", 4,
         "unknown segment 'nope'"),
        ("segments:\n  s: {has: email}\n  t: {has: phone}\naudiences:\n  a:\n    segment: s\n"
         "    exclude:\n      - t\n      - gone\n", 9, "unknown segment 'gone'"),
        ("segments:\n  s: {has: email}\naudiences:\n  a: {segment: s, exclude: [s]}\n", 4,
         "excludes its own segment s"),
        ("segments:\n  s: {has: email}\naudiences:\n  a:\n    segment: s\n    holdout:\n"
         "      percent: 100\n", 7, "between 0 and 100"),
        ("segments:\n  s: {has: email}\naudiences:\n  a: {segment: s, holdout: {percent: 0}}\n",
         4, "between 0 and 100"),
        ("segments:\n  s: {has: email}\naudiences:\n  a:\n    segment: s\n    refresh: 2h\n", 6,
         "use realtime, 15m, 1h, 1d or a 5-field cron"),
        ("segments:\n  s: {has: email}\naudiences:\n  a: {segment: s, refresh: 61 * * * *}\n", 4,
         "bad refresh"),
        ("segments:\n  s: {has: email}\naudiences:\n  a: {segment: s, colour: red}\n", 4,
         "allowed here: segment, exclude, holdout, refresh"),
    ],
)  # fmt: skip
def test_errors_name_file_line_and_fix(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    message = str(info.value)
    assert message.startswith(f"{F}:{line}: "), message
    assert fragment in message, message


def test_cycles_report_their_path_and_line() -> None:
    text = """\
segments:
  a: {segment: b}
  b:
    any:
      - {has: email}
      - {segment: c}
  c: {not: {segment: a}}
"""
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value).startswith(f"{F}:7: segments refer to each other in a cycle ")
    assert "(a -> b -> c -> a)" in str(info.value)
    with pytest.raises(ConfigError, match=r"cohortsync.yml:2: .*\(s -> s\)"):
        parse("segments:\n  s: {all: [{segment: s}]}\n")
    # A diamond is not a cycle.
    parse(
        "segments:\n  a: {has: email}\n  b: {segment: a}\n"
        "  c: {all: [{segment: a}, {segment: b}]}\n"
    )


def test_cron_forms_accepted() -> None:
    for cron in ("*/15 * * * *", "0 6 * * 1-5", "30 2 1,15 jan-jun sun", "0 0 * * 7"):
        text = (
            f"segments:\n  s: {{has: email}}\naudiences:\n  a: {{segment: s, refresh: '{cron}'}}\n"
        )
        assert parse(text).audiences["a"].refresh == cron


def test_parse_segments_from_a_loaded_project(tmp_path: Path) -> None:
    (tmp_path / F).write_text(
        "segments:\n  buyers: {event: order_completed}\n  bad: {event: x, within: soon}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        parse_segments(load_project(tmp_path))
    assert info.value.line == 3
    assert info.value.file is not None and info.value.file.endswith(F)
    (tmp_path / F).write_text("segments:\n  buyers: {event: order_completed}\n", encoding="utf-8")
    project = parse_segments(load_project(tmp_path))
    assert project.segments["buyers"].condition == EventCondition(
        "order_completed",
        position=Position(project.segments["buyers"].position.file, 2),  # type: ignore[union-attr]
    )
