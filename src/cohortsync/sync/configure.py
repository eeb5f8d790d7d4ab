"""From the project file to sync routes: destinations validated, audiences and conversions wired.

Every problem is a `cohortsync.yml:LINE` error naming the fix: an unknown `type:`, a bad setting
of a destination, an audience or conversion naming a destination that does not exist or cannot
take it. What a destination can take is read from its capabilities, and so are the alternatives
a message suggests: a type installed from another package is named like the built-ins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from pydantic import AliasChoices, BaseModel, ValidationError

from cohortsync.config.loader import LoadedProject, display_path
from cohortsync.destinations.base import (
    AnyDestination,
    Capabilities,
    DestinationConfig,
    DestinationContext,
)
from cohortsync.destinations.registry import (
    DestinationTypeError,
    destination_class,
    known_types,
    types_where,
)
from cohortsync.errors import ConfigError
from cohortsync.segments.ast import Audience, SegmentProject
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
                self.classes[r.destination].capabilities.identifiers,
                self.classes[r.destination].capabilities.ad_platform,
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
            capabilities = cls.capabilities
            problem = _audience_problem(name, cls.kind, capabilities, audience)
            if problem is not None:
                message, key = problem
                raise ConfigError(message, display, loaded.line_of("audiences", audience.name, key))
            routes.append(
                Route(
                    name,
                    audience.name,
                    include_holdout=not capabilities.ad_platform,
                    dry_run=configs[name].dry_run,
                )
            )
    conversion_routes: list[ConversionRoute] = []
    for index, rule in enumerate(loaded.project.conversions):
        for name in rule.destinations:
            cls = _named(loaded, display, classes, name, ("conversions", index))
            if not cls.capabilities.conversions:
                takers = _listed(types_where(lambda c: c.conversions))
                raise ConfigError(
                    f"destination {name!r} ({cls.kind}) does not take conversions: "
                    f"send them to a destination of type {takers}",
                    display,
                    loaded.line_of("conversions", index, "destinations"),
                )
            conversion_routes.append(
                ConversionRoute(name, event_key(rule.event), rule.as_, rule.value, rule.currency)
            )
    identifiers = {a.name: tuple(a.identifiers) for a in segments.audiences.values()}
    return SyncSetup(configs, classes, tuple(routes), tuple(conversion_routes), identifiers)


def _audience_problem(
    name: str, kind: str, capabilities: Capabilities, audience: Audience
) -> tuple[str, str] | None:
    """Why `audience` cannot go to destination `name`, and the key of the line to show."""
    if not capabilities.audiences:
        takers = _listed(types_where(lambda c: c.audiences))
        return (
            f"destination {name!r} ({kind}) takes conversions, not audiences: list it under "
            f"conversions:, or send {audience.name} to a destination of type {takers}",
            "destinations",
        )
    if not capabilities.removes:
        takers = _listed(types_where(lambda c: c.audiences and c.removes))
        return (
            f"destination {name!r} ({kind}) cannot remove members, so people leaving "
            f"{audience.name} would stay in it: send {audience.name} to a destination that "
            f"removes ({takers})",
            "destinations",
        )
    wanted = audience.identifiers
    if capabilities.ad_platform and wanted and not set(wanted) & set(capabilities.identifiers):
        return (
            f"audience {audience.name!r} gives ad platforms only {', '.join(wanted)} "
            f"(identifiers:), and destination {name!r} ({kind}) matches on "
            f"{', '.join(capabilities.identifiers)}: add one of those to identifiers:, or send "
            "the audience elsewhere",
            "identifiers",
        )
    return None


def _listed(names: list[str]) -> str:
    """`a, b or c`."""
    if len(names) <= 1:
        return names[0] if names else "none installed"
    return f"{', '.join(names[:-1])} or {names[-1]}"


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
    type_line = loaded.line_of("destinations", name, "type")
    try:
        cls = destination_class(str(type_name))
    except KeyError:
        raise ConfigError(
            f"destination {name!r} has unknown type {type_name!r}: use one of "
            f"{', '.join(known_types())}, or package.module:ClassName for a class of your own",
            display,
            type_line,
        ) from None
    except DestinationTypeError as exc:
        raise ConfigError(f"destination {name!r}: {exc}", display, type_line) from None
    try:
        # `type:` may be `package.module:Class`; the settings know the class by its kind.
        config = cls.config_model.model_validate({**raw, "type": cls.kind})
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        where = ".".join(str(p) for p in loc)
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(setting_names(cls.config_model))
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


def setting_names(model: type[BaseModel]) -> list[str]:
    """The keys a settings model reads: its fields and the other names a field accepts
    (`base_url` for Meta's `api_url`)."""
    names = set(model.model_fields)
    for field in model.model_fields.values():
        if isinstance(field.validation_alias, AliasChoices):
            names |= {c for c in field.validation_alias.choices if isinstance(c, str)}
    return sorted(names)


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
