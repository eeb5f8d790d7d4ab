"""The measured lint rules: they read the current memberships (the last compute) and the
members' identifiers; without a compute they have nothing to measure and find nothing."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations

from cohortsync.ops.lint_codes import Finding
from cohortsync.ops.lint_context import LintContext, Measures
from cohortsync.ops.lint_tree import suppression_lists
from cohortsync.segments.ast import Audience


def _listed(names: list[str]) -> str:
    return ", ".join(names)


def under_minimum(ctx: LintContext, m: Measures) -> Iterator[Finding]:
    """CS104: fewer matchable members than the platform serves an audience to."""
    for audience in ctx.audiences:
        for name in ctx.ads(audience):
            minimum = ctx.places[name].minimum
            if minimum is None:
                continue
            usable = len(
                m.holding(m.sent(audience.name), ctx.accepts.get((name, audience.name), ()))
            )
            if usable < minimum:
                yield Finding(
                    "CS104",
                    audience.name,
                    f"{audience.name} has {usable:,} matchable members for {name}, under the "
                    f"platform's minimum of {minimum:,}: it will not be served",
                    f"widen {audience.segment} (a longer window), merge {audience.name} with a "
                    f"similar audience, or stop sending it to {name}",
                    destination=name,
                    figure=usable,
                )


def holdout_leak(ctx: LintContext, m: Measures) -> Iterator[Finding]:
    """CS105: holdout members sent to an ad platform as members of another audience."""
    for audience in ctx.audiences:
        held = m.holdout[audience.name]
        if not held:
            continue
        through: dict[str, int] = {}
        leaked: set[str] = set()
        for other in ctx.audiences:
            if other.name == audience.name or not ctx.ads(other):
                continue
            shared = held & m.sent(other.name)
            if shared:
                through[other.name] = len(shared)
                leaked |= shared
        if leaked:
            routes = ", ".join(f"{name} ({count:,})" for name, count in sorted(through.items()))
            yield Finding(
                "CS105",
                audience.name,
                f"{len(leaked):,} of {audience.name}'s {len(held):,} holdout members reach ad "
                f"platforms through {routes}: the control group is advertised to and its lift "
                "is lost",
                f"add {audience.segment} to the exclude: of {_listed(sorted(through))}",
                figure=len(leaked),
            )


def low_coverage(ctx: LintContext, m: Measures) -> Iterator[Finding]:
    """CS108: too few members sent to ad platforms hold the primary identifier."""
    least = ctx.config.min_identifier_coverage
    for audience in ctx.audiences:
        sent = m.sent(audience.name)
        if not ctx.ads(audience) or not sent:
            continue
        share = m.coverage(sent, ctx.primary)
        if share >= least:
            continue
        kinds = dict.fromkeys((ctx.primary, *ctx.allowed(audience)))
        shares = ", ".join(f"{k} {m.coverage(sent, k):.0%}" for k in kinds)
        yield Finding(
            "CS108",
            audience.name,
            f"only {share:.0%} of {audience.name}'s {len(sent):,} members outside the holdout "
            f"hold an {ctx.primary}, under lint.min_identifier_coverage ({least:.0%}); "
            f"coverage: {shares}",
            f"collect {ctx.primary} on identify, or add {{has: {ctx.primary}}} to "
            f"{audience.segment}",
            figure=share,
        )


def anonymous_share(ctx: LintContext, m: Measures) -> Iterator[Finding]:
    """CS112: too many members sent to ad platforms hold no identifier they may be sent by."""
    most = ctx.config.max_anonymous_share
    for audience in ctx.audiences:
        sent = m.sent(audience.name)
        if not ctx.ads(audience) or not sent:
            continue
        allowed = ctx.allowed(audience)
        anonymous = len(sent - m.holding(sent, allowed))
        share = anonymous / len(sent)
        if share > most:
            yield Finding(
                "CS112",
                audience.name,
                f"{share:.0%} of {audience.name}'s {len(sent):,} members outside the holdout "
                f"({anonymous:,}) hold none of {_listed(list(allowed))}: anonymous-only, above "
                f"lint.max_anonymous_share ({most:.0%})",
                f"add {{has: {allowed[0]}}} to {audience.segment}, or raise "
                "lint.max_anonymous_share",
                figure=share,
            )


def _common(a: Audience, b: Audience) -> list[str]:
    return [d for d in a.destinations if d in b.destinations]


def offer_conflict(ctx: LintContext, m: Measures) -> Iterator[Finding]:
    """CS109: two offers to one member on one destination, or a discount to someone who
    must not get one (a suppression list, or a segment named in lint.no_discount_segments)."""
    offered = [a for a in ctx.audiences if a.offer]
    for a, b in combinations(offered, 2):
        common = _common(a, b)
        shared = len(m.members[a.name] & m.members[b.name])
        if a.offer != b.offer and common and shared:
            yield Finding(
                "CS109",
                a.name,
                f"{a.name} ({a.offer}) and {b.name} ({b.offer}) both go to {_listed(common)} "
                f"and share {shared:,} members: they are shown two offers",
                f"add {b.segment} to {a.name}'s exclude: (or {a.segment} to {b.name}'s)",
                destination=common[0],
                figure=shared,
            )
    lists = suppression_lists(ctx.project, ctx.purchases)
    for a in offered:
        if not (a.offer or "").startswith("discount"):
            continue
        clashes: list[tuple[str, str, int]] = []
        for name in sorted(lists - {a.name}):
            shared = len(m.members[a.name] & m.members[name])
            segment = ctx.project.audiences[name].segment
            if shared:
                clashes.append((f"suppression list {name}", segment, shared))
        for segment in ctx.config.no_discount_segments:
            shared = len(m.members[a.name] & m.segment(segment))
            if shared:
                clashes.append((f"no-discount segment {segment}", segment, shared))
        for what, segment, shared in clashes:
            yield Finding(
                "CS109",
                a.name,
                f"{a.name} offers {a.offer} to {shared:,} members of the {what}",
                f"add {segment} to {a.name}'s exclude:",
                figure=shared,
            )


def near_duplicates(ctx: LintContext, m: Measures) -> Iterator[Finding]:
    """CS110: two audiences on one destination with nearly the same members."""
    above = ctx.config.near_duplicate_overlap
    for a, b in combinations(ctx.audiences, 2):
        common = _common(a, b)
        union = m.members[a.name] | m.members[b.name]
        if not common or not union:
            continue
        shared = len(m.members[a.name] & m.members[b.name])
        overlap = shared / len(union)
        if overlap > above:
            yield Finding(
                "CS110",
                a.name,
                f"{a.name} and {b.name} both go to {_listed(common)} and overlap {overlap:.0%} "
                f"({shared:,} shared of {len(union):,}), above lint.near_duplicate_overlap "
                f"({above:.0%})",
                f"merge {a.name} and {b.name}, or retire one",
                destination=common[0],
                figure=overlap,
            )
