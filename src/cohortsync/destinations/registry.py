"""Which module implements each destination `type:`; imported only when a project uses it.

A `type:` of the form `package.module:ClassName` loads a destination written outside
cohortsync (any `Destination` subclass): the way to add a system cohortsync does not ship.
"""

from __future__ import annotations

import importlib

from cohortsync.destinations.base import AnyDestination, Destination

MODULES = {
    "warehouse": "cohortsync.destinations.warehouse",
    "files": "cohortsync.destinations.files",
    "webhook": "cohortsync.destinations.webhook",
    "segment": "cohortsync.destinations.segment",
    "meta_custom_audience": "cohortsync.destinations.meta_custom_audience",
    "meta_capi": "cohortsync.destinations.meta_capi",
}


def known_types() -> list[str]:
    """Every `type:` a destination may have."""
    return sorted(MODULES)


def destination_class(type_name: str) -> type[AnyDestination]:
    """The class for a destination `type:`; KeyError when no module implements it."""
    if ":" in type_name:
        module_name, _, class_name = type_name.partition(":")
        found = getattr(importlib.import_module(module_name), class_name, None)
        if isinstance(found, type) and issubclass(found, Destination):
            return found
        raise KeyError(type_name)
    kind = type_name
    module = importlib.import_module(MODULES[kind])
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, Destination)
            and getattr(value, "kind", None) == kind
        ):
            return value
    raise KeyError(type_name)
