"""Who is in an audience: the members of the segments its rule names, by that one rule.

Real time passes the one profile it evaluates (in each segment it is inside); batch compute
applies the rule in SQL to the per-profile segment flags (`rule_sql`). Both read
`Audience.condition`, the rule the SQL compiler compiles too, so the paths cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sqlglot import exp

from cohortsync.audiences.holdout import holdout_flags
from cohortsync.segments.ast import All, Audience, Condition, Not, SegmentRef


def audience_members(
    audience: Audience, segments: Mapping[str, Collection[str]]
) -> list[tuple[str, bool]]:
    """The audience's members among `segments` (name → member ids; a missing name has none),
    in the order of its segment's members, each flagged holdout or not."""
    condition = audience.condition
    sets = {name: frozenset(segments.get(name, ())) for name in _refs(condition)}
    ids = [p for p in segments.get(audience.segment, ()) if _holds(condition, sets, p)]
    flags = holdout_flags(audience.name, ids, audience.holdout_percent)
    return list(zip(ids, flags, strict=True))


def rule_sql(condition: Condition, columns: Mapping[str, str]) -> exp.Expr:
    """The rule as a boolean SQL expression over per-profile segment flags (`columns` maps a
    segment to its flag column; a segment without one has no members)."""
    if isinstance(condition, SegmentRef):
        column = columns.get(condition.name)
        if column is None:
            return exp.false()
        return exp.Is(this=exp.column(column, quoted=True), expression=exp.true())
    if isinstance(condition, All):
        parts = [rule_sql(c, columns) for c in condition.conditions]
        return exp.and_(*parts, copy=False) if parts else exp.true()
    if isinstance(condition, Not):
        return exp.not_(rule_sql(condition.condition, columns), copy=False)
    raise TypeError(f"an audience rule holds segments, all and not; not {condition!r}")


def _holds(condition: Condition, sets: Mapping[str, frozenset[str]], profile_id: str) -> bool:
    if isinstance(condition, SegmentRef):
        return profile_id in sets[condition.name]
    if isinstance(condition, All):
        return all(_holds(c, sets, profile_id) for c in condition.conditions)
    if isinstance(condition, Not):
        return not _holds(condition.condition, sets, profile_id)
    raise TypeError(f"an audience rule holds segments, all and not; not {condition!r}")


def _refs(condition: Condition) -> set[str]:
    if isinstance(condition, SegmentRef):
        return {condition.name}
    if isinstance(condition, All):
        return set().union(*(_refs(c) for c in condition.conditions))
    if isinstance(condition, Not):
        return _refs(condition.condition)
    return set()
