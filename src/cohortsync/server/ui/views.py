"""What each dashboard page shows, gathered from the engine and the store's statements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup

from cohortsync import charts
from cohortsync.engine import (
    Audience,
    AudienceSize,
    DeadGroup,
    Engine,
    Reported,
    RouteStatus,
    explanation_json,
)
from cohortsync.server.ui.render import clock_label, count_label, day_label, svg

EVENT_HOURS = 6
"""Hours of events per minute on the overview."""
HISTORY_DAYS = 30
"""Days of size, entries and exits on an audience's page."""


@dataclass(frozen=True)
class DestinationHealth:
    """One destination at a glance: its routes' figures summed and its latest error."""

    name: str
    type: str
    dry_run: bool
    lines: Sequence[RouteStatus]

    def total(self, figure: str) -> int:
        """One RouteStatus count summed over the destination's routes."""
        return sum(int(getattr(line, figure)) for line in self.lines)

    @property
    def last_sync(self) -> datetime | None:
        """The latest delivery resolved on any of its routes."""
        return max((s.last_sync for s in self.lines if s.last_sync), default=None)

    @property
    def last_error(self) -> str | None:
        """The error of a route still retrying, if any."""
        return next((s.last_error for s in self.lines if s.last_error), None)

    @property
    def state(self) -> str:
        """One word for the glance: dead letters, retrying, sending, in sync or dry run."""
        if self.total("dead_lettered"):
            return "dead letters"
        if self.total("retrying"):
            return "retrying"
        if self.total("pending"):
            return "sending"
        return "dry run" if self.dry_run else "in sync"


@dataclass(frozen=True)
class Overview:
    """The overview page."""

    events_chart: Markup
    events_total: int
    profiles: int
    audiences: list[tuple[Audience, AudienceSize]]


@dataclass(frozen=True)
class AudiencePage:
    """One audience's page."""

    audience: Audience
    size: AudienceSize
    size_chart: Markup
    moves_chart: Markup
    rules: str


@dataclass(frozen=True)
class DestinationPage:
    """One destination's page."""

    health: DestinationHealth
    dead: list[DeadGroup]
    audiences: list[str] = field(default_factory=list)


def accepted_rate(line: RouteStatus) -> float | None:
    """Members the platform accepted over those it answered for (per-record refusals are what
    it reports); None before it answered for any."""
    answered = line.acknowledged + line.failed
    return line.acknowledged / answered if answered else None


def health(engine: Engine, status: Sequence[RouteStatus]) -> list[DestinationHealth]:
    """Every configured destination with the status lines of its routes."""
    configs = engine.sync_setup.configs
    return [
        DestinationHealth(
            name, str(config.type), config.dry_run, [s for s in status if s.destination == name]
        )
        for name, config in sorted(configs.items())
    ]


def overview(engine: Engine, now: datetime) -> Overview:
    """Events per minute, profiles and audience sizes (destination health comes apart)."""
    minutes = engine.figures.events_per_minute(now, EVENT_HOURS)
    points = [(m.replace(tzinfo=UTC).timestamp(), float(n)) for m, n in minutes]
    chart = charts.line_chart(
        [charts.Series("events", points)],
        title=f"Events per minute, last {EVENT_HOURS} hours (event time, UTC)",
        x_format=clock_label,
        y_format=count_label,
    )
    sizes = engine.figures.audience_sizes()
    audiences = engine.segments.audiences
    listed = [(audiences[n], sizes.get(n, AudienceSize(0, 0))) for n in sorted(audiences)]
    return Overview(
        svg(chart),
        sum(n for _, n in minutes),
        engine.figures.profile_count(),
        listed,
    )


def destinations_health(engine: Engine) -> list[DestinationHealth]:
    """Every destination at a glance (the overview loads it apart: the status read is slow)."""
    return health(engine, engine.sync_status())


def audience_page(engine: Engine, audience: Audience, now: datetime) -> AudiencePage:
    """Size over time, entries and exits per day, rules and holdout (destinations and lint
    come apart: `audience_routes`, `audience_lint`)."""
    days = engine.figures.audience_history(audience.name, now, HISTORY_DAYS)
    epochs = [d.day.replace(tzinfo=UTC).timestamp() for d in days]
    size_chart = charts.line_chart(
        [charts.Series("members", [(x, float(d.size)) for x, d in zip(epochs, days, strict=True)])],
        title=f"Members at the end of each day, last {HISTORY_DAYS} days (UTC)",
        x_format=day_label,
        y_format=count_label,
    )
    labels = [day_label(x) for x in epochs]
    moves_chart = charts.bar_chart(
        labels,
        [
            charts.Series("entries", [(i, float(d.entered)) for i, d in enumerate(days)]),
            charts.Series("exits", [(i, float(d.exited)) for i, d in enumerate(days)]),
        ],
        title="Entries and exits per day (UTC)",
        y_format=count_label,
    )
    size = engine.figures.audience_sizes().get(audience.name, AudienceSize(0, 0))
    return AudiencePage(
        audience, size, svg(size_chart), svg(moves_chart), engine.explain(audience.name)
    )


def audience_routes(engine: Engine, audience: str) -> list[RouteStatus]:
    """The delivery state of one audience at each of its destinations."""
    return engine.sync_status(audience=audience)


def audience_lint(engine: Engine, audience: str) -> tuple[list[Reported], bool]:
    """Lint findings about one audience or the whole project, and whether measured rules ran;
    no platform is asked (no network call)."""
    lint = engine.lint(read_back=False)
    return [r for r in lint.findings if r.finding.audience in (audience, None)], lint.measured


def destination_page(engine: Engine, name: str) -> DestinationPage:
    """Pending, retrying, dead letters, match rates and the last error of one destination."""
    status = engine.sync_status(destination=name)
    config = engine.sync_setup.configs[name]
    found = DestinationHealth(name, str(config.type), config.dry_run, status)
    audiences = sorted({s.audience for s in status if s.audience})
    return DestinationPage(found, engine.figures.dead_letters(name), audiences)


def profile_page(engine: Engine, identifier: str) -> dict[str, Any]:
    """Why the profile is in or out of each audience (JSON-ready) and its identifiers."""
    why = explanation_json(engine.explain_profile(identifier))
    return {"why": why, "identifiers": engine.figures.identifiers(why["profile_id"])}
