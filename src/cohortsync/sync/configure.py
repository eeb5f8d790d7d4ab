"""From the project file to sync routes: destinations validated, audiences and conversions wired.

Every problem is a `cohortsync.yml:LINE` error naming the fix: an unknown `type:`, a bad setting
of a destination, an audience or conversion naming a destination that does not exist or cannot
take it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from pydantic import ValidationError

from cohortsync.config.loader import LoadedProject, display_path
from cohortsync.destinations.base import (
    AnyDestination,
    DestinationConfig,
    DestinationContext,
)
from cohortsync.destinations.registry import destination_class, known_types
from cohortsync.errors import ConfigError
from cohortsync.segments.ast import SegmentProject
from cohortsync.segments.names import event_key
from cohortsync.store.outbox import ConversionRoute, Route
from cohortsync.sync.worker import match_kinds


@dataclass(frozen=True)
class SyncSetup:
    """The project's destinations (validated settings) and what flows to each."""

    configs: Mapping[str, DestinationConfig]
    classes: Mapping[str, type[AnyDestination]]
    routes: tuple[Route, ...]
    conversion_routes: tuple[ConversionRoute, ...]
    identifiers: Mapping[str, tuple[str, ...]]
    """Per audience, the identifier kinds it may send (empty: every kind)."""

    def accepts(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """Per (destination, audience), the identifier kinds a member can be matched on: what
        the destination accepts, and for an ad platform only what the audience allows."""
        return {
            (r.destination, r.audience): match_kinds(
                self.classes[r.destination].accepts,
                self.classes[r.destination].ad_platform,
                self.identifiers.get(r.audience, ()),
            )
            for r in self.routes
        }

    def open(
        self,
        root: Any,
        http: httpx.Client,
        clock: Callable[[], datetime],
        only: str | None = None,
    ) -> dict[str, AnyDestination]:
        """Instantiate destinations (all, or the one named `only`)."""
        return {
            name: cls(self.configs[name], DestinationContext(name, root, http, clock))
            for name, cls in self.classes.items()
            if only is None or name == only
        }


def sync_setup(loaded: LoadedProject, segments: SegmentProject) -> SyncSetup:
    """Validate `destinations:` and `conversions:` against the audiences; build the routes."""
    display = display_path(loaded.file)
    configs: dict[str, DestinationConfig] = {}
    classes: dict[str, type[AnyDestination]] = {}
    for name, raw in loaded.project.destinations.items():
        cls, config = _destination(loaded, display, name, raw)
        classes[name], configs[name] = cls, config
    routes: list[Route] = []
    for audience in segments.audiences.values():
        for name in audience.destinations:
            cls = _named(loaded, display, classes, name, ("audiences", audience.name))
            if not cls.audiences:
                raise ConfigError(
                    f"destination {name!r} ({cls.kind}) takes conversions, not audiences: "
                    "list it under conversions:, or pick another destination",
                    display,
                    loaded.line_of("audiences", audience.name, "destinations"),
                )
            routes.append(
                Route(
                    name,
                    audience.name,
                    include_holdout=not cls.ad_platform,
                    dry_run=configs[name].dry_run,
                )
            )
    conversion_routes: list[ConversionRoute] = []
    for index, rule in enumerate(loaded.project.conversions):
        for name in rule.destinations:
            cls = _named(loaded, display, classes, name, ("conversions", index))
            if not cls.conversions:
                raise ConfigError(
                    f"destination {name!r} ({cls.kind}) does not take conversions: "
                    "use meta_capi, warehouse, webhook or segment",
                    display,
                    loaded.line_of("conversions", index, "destinations"),
                )
            conversion_routes.append(
                ConversionRoute(name, event_key(rule.event), rule.as_, rule.value, rule.currency)
            )
    identifiers = {a.name: tuple(a.identifiers) for a in segments.audiences.values()}
    return SyncSetup(configs, classes, tuple(routes), tuple(conversion_routes), identifiers)


def _destination(
    loaded: LoadedProject, display: str, name: str, raw: Any
) -> tuple[type[AnyDestination], DestinationConfig]:
    line = loaded.line_of("destinations", name)
    if not isinstance(raw, Mapping) or "type" not in raw:
        raise ConfigError(
            f"destination {name!r} needs a type: one of {', '.join(known_types())}",
            display,
            line,
        )
    type_name = raw["type"]
    try:
        cls = destination_class(str(type_name))
    except (KeyError, ImportError):
        raise ConfigError(
            f"destination {name!r} has unknown type {type_name!r}: use one of "
            f"{', '.join(known_types())}",
            display,
            loaded.line_of("destinations", name, "type"),
        ) from None
    try:
        config = cls.config_model.model_validate(dict(raw))
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        where = ".".join(str(p) for p in loc)
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(cls.config_model.model_fields))
            message = f"unknown key {where!r}: remove or rename it; allowed here: {allowed}"
        elif error["type"] == "missing":
            message = f"{where} is required for a {cls.kind} destination: add it"
        else:
            message = f"{where}: {error['msg'].removeprefix('Value error, ')}"
        raise ConfigError(
            f"destination {name!r}: {message}",
            display,
            loaded.line_of("destinations", name, *loc),
        ) from None
    return cls, config


def _named(
    loaded: LoadedProject,
    display: str,
    classes: Mapping[str, type[AnyDestination]],
    name: str,
    where: tuple[str | int, ...],
) -> type[AnyDestination]:
    if name in classes:
        return classes[name]
    known = ", ".join(sorted(classes)) or "none yet"
    raise ConfigError(
        f"unknown destination {name!r}: define it under destinations: (defined: {known})",
        display,
        loaded.line_of(*where, "destinations"),
    )
