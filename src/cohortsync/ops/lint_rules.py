"""The static lint rules: read from the project file alone, no store needed (measured figures
are quoted when a compute exists)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from cohortsync.ops.lint_codes import Finding
from cohortsync.ops.lint_context import LintContext
from cohortsync.ops.lint_tree import (
    is_intent,
    segment_suppresses,
    suppressing_exclusions,
)

SUPPRESSION_EXAMPLE = "{event: order_completed, within: 7d}"


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names)


def retargeting_without_suppression(ctx: LintContext) -> Iterator[Finding]:
    """CS101: an intent audience on an ad platform excluding no purchase-suppression segment."""
    buyers = sorted(
        s for s in ctx.project.segments if segment_suppresses(ctx.project, s, ctx.purchases)
    )
    for audience in ctx.audiences:
        ads = ctx.ads(audience)
        if not ads or not is_intent(ctx.project, audience, ctx.intent, ctx.purchases):
            continue
        if suppressing_exclusions(ctx.project, audience, ctx.purchases):
            continue
        figure: float | None = None
        measured = ""
        if ctx.measures is not None and buyers:
            sent = ctx.measures.sent(audience.name)
            figure = len(sent & ctx.measures.segment(buyers[0]))
            measured = (
                f"; {figure:,.0f} of its {len(sent):,} members outside the holdout are in "
                f"{buyers[0]} now"
            )
        target = buyers[0] if buyers else f"a segment such as {SUPPRESSION_EXAMPLE}"
        yield Finding(
            "CS101",
            audience.name,
            f"{audience.name} retargets intent on {_listed(ads)} but excludes no segment holding "
            f"every recent {'/'.join(ctx.purchases)}: buyers keep seeing its ads{measured}",
            f"add exclude: [{target}] to {audience.name}",
            figure=figure,
        )


def suppression_not_realtime(ctx: LintContext) -> Iterator[Finding]:
    """CS102: buyers leave an ad-platform audience (or enter a suppression list sent to one)
    only on a cadence."""
    for audience in ctx.audiences:
        ads = ctx.ads(audience)
        if not ads:
            continue
        excluded = suppressing_exclusions(ctx.project, audience, ctx.purchases)
        if excluded and audience.refresh != "realtime" and audience.exits != "realtime":
            yield Finding(
                "CS102",
                audience.name,
                f"{audience.name} excludes buyers ({_listed(excluded)}) from {_listed(ads)} only "
                f"on its {audience.refresh} refresh: a buyer stays retargeted up to "
                f"{audience.refresh} after ordering",
                f"set exits: realtime (or refresh: realtime) on {audience.name}",
            )
        elif (
            segment_suppresses(ctx.project, audience.segment, ctx.purchases)
            and audience.refresh != "realtime"
        ):
            yield Finding(
                "CS102",
                audience.name,
                f"{audience.name} is a purchase suppression list sent to {_listed(ads)} but "
                f"refreshed every {audience.refresh}: a buyer enters it up to "
                f"{audience.refresh} late and is retargeted meanwhile",
                f"set refresh: realtime on {audience.name}",
            )


def too_many_audiences(ctx: LintContext) -> Iterator[Finding]:
    """CS103: more ad-platform audiences on one destination than the project allows."""
    most = ctx.config.max_audiences_per_destination
    for name, place in sorted(ctx.places.items()):
        if not place.ad_platform:
            continue
        names = [a.name for a in ctx.audiences if name in a.destinations]
        if len(names) > most:
            yield Finding(
                "CS103",
                None,
                f"{name} receives {len(names)} ad-platform audiences, more than "
                f"lint.max_audiences_per_destination ({most}): {_listed(names)}",
                "keep the 6–10 that map to clear actions (merge or retire the rest), or raise "
                "lint.max_audiences_per_destination",
                destination=name,
                figure=len(names),
            )


def holdout_not_measurable(ctx: LintContext) -> Iterator[Finding]:
    """CS106: a holdout whose members reach no destination that records them."""
    for audience in ctx.audiences:
        if audience.holdout_percent is None or ctx.owned(audience):
            continue
        measured = ""
        figure: float | None = audience.holdout_percent
        if ctx.measures is not None:
            figure = len(ctx.measures.holdout[audience.name])
            measured = f" ({figure:,.0f} members held out now)"
        yield Finding(
            "CS106",
            audience.name,
            f"{audience.name} holds out {audience.holdout_percent:g}%{measured} but goes only to "
            f"ad platforms ({_listed(audience.destinations)}), which never receive the holdout: "
            "the experiment cannot be measured",
            f"add a warehouse or analytics destination to {audience.name}'s destinations:",
            figure=figure,
        )


def identifier_mismatch(ctx: LintContext) -> Iterator[Finding]:
    """CS107: an ad platform not given the identifier it matches on first."""
    for audience in ctx.audiences:
        if not audience.identifiers:
            continue
        for name in ctx.ads(audience):
            first = ctx.places[name].identifiers[0]
            if first in audience.identifiers:
                continue
            measured = ""
            figure: float | None = None
            if ctx.measures is not None:
                sent = ctx.measures.sent(audience.name)
                kinds = ctx.accepts.get((name, audience.name), ())
                figure = len(ctx.measures.holding(sent, kinds)) / len(sent) if sent else 0.0
                shares = ", ".join(
                    f"{k} {ctx.measures.coverage(sent, k):.0%}" for k in (first, *kinds)
                )
                measured = f"; of its {len(sent):,} members outside the holdout: {shares}"
            yield Finding(
                "CS107",
                audience.name,
                f"{audience.name} gives {name} only {_listed(list(audience.identifiers))} "
                f"(identifiers:), and {name} ({ctx.places[name].kind}) matches on {first} "
                f"first{measured}",
                f"add {first} to {audience.name}'s identifiers:",
                destination=name,
                figure=figure,
            )


def undocumented(ctx: LintContext) -> Iterator[Finding]:
    """CS111: an audience without owner or description."""
    for audience in ctx.audiences:
        missing = [
            key
            for key, value in (("owner", audience.owner), ("description", audience.description))
            if not (value or "").strip()
        ]
        if missing:
            yield Finding(
                "CS111",
                audience.name,
                f"{audience.name} has no {' and no '.join(missing)}: paid and analytics cannot "
                "tell who answers for it or what its entry and exit rules are",
                f"add {' and '.join(f'{m}:' for m in missing)} to {audience.name}",
            )
