"""Which class implements each destination `type:`: the `cohortsync.destinations` entry points.

Built-ins register in cohortsync's own `pyproject.toml` exactly as a third-party package does in
its own (`acme_lists = "acme.acme_lists:AcmeListsDestination"`): the entry-point name is the
`type:`, the module's name and the class's `kind`. Nothing is imported until a project uses it.
A `type:` of the form `package.module:ClassName` loads a class without registering it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from cohortsync.destinations.base import AnyDestination, Capabilities, Destination
from cohortsync.errors import CohortsyncError

GROUP = "cohortsync.destinations"


class DestinationTypeError(CohortsyncError):
    """A destination class that cannot be used as it is: not found, or not declared right."""


def registered() -> dict[str, EntryPoint]:
    """Every registered `type:` and its entry point; read afresh, so a package installed since
    is seen. Two packages registering one name is an error, not a silent pick."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=GROUP):
        other = found.get(point.name)
        if other is not None and other.value != point.value:
            raise DestinationTypeError(
                f"destination type {point.name!r} is registered twice, as {other.value} and "
                f"{point.value}: uninstall one of the packages"
            )
        found[point.name] = point
    return found


def known_types() -> list[str]:
    """Every registered `type:`."""
    return sorted(registered())


def destination_class(type_name: str) -> type[AnyDestination]:
    """The class for a destination `type:`.

    KeyError when nothing is registered under that name; `DestinationTypeError` when a class is
    found but cannot be loaded or is not a destination declared as one must be.
    """
    if ":" in type_name:
        module_name, _, class_name = type_name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise DestinationTypeError(
                f"cannot import {module_name!r} for type {type_name!r} ({exc}): install the "
                "package that provides it, or fix type:"
            ) from None
        return _checked(getattr(module, class_name, None), type_name, None)
    points = registered()
    if not points:
        raise DestinationTypeError(
            f"no destination types are registered (entry-point group {GROUP}): cohortsync is "
            "not installed in this environment; run pip install cohortsync (or pip install -e .)"
        )
    point = points.get(type_name)
    if point is None:
        raise KeyError(type_name)
    try:
        found = point.load()
    except (ImportError, AttributeError) as exc:
        raise DestinationTypeError(
            f"destination type {type_name!r} is registered as {point.value}, which cannot be "
            f"loaded ({type(exc).__name__}: {exc}): reinstall the package that provides it"
        ) from None
    return _checked(found, type_name, type_name)


def types_where(wanted: Callable[[Capabilities], bool]) -> list[str]:
    """The registered types whose capabilities satisfy `wanted` (for messages naming the
    alternatives); a type that cannot be loaded is left out."""
    names = []
    for name in known_types():
        try:
            cls = destination_class(name)
        except (KeyError, DestinationTypeError):
            continue
        if wanted(cls.capabilities):
            names.append(name)
    return names


def _checked(found: object, type_name: str, registered_as: str | None) -> type[AnyDestination]:
    """The class, if it is a `Destination` with capabilities and, when registered, a `kind`
    equal to its entry-point name."""
    if not (isinstance(found, type) and issubclass(found, Destination)):
        raise DestinationTypeError(
            f"type {type_name!r} names {found!r}, which is not a subclass of "
            "cohortsync.destinations.base.Destination"
        )
    if not isinstance(getattr(found, "capabilities", None), Capabilities):
        raise DestinationTypeError(
            f"{found.__module__}.{found.__name__} declares no capabilities: add "
            "capabilities = Capabilities(identifiers=(...), ...) to the class"
        )
    kind = getattr(found, "kind", None)
    if registered_as is not None and kind != registered_as:
        raise DestinationTypeError(
            f"entry point {registered_as!r} loads {found.__module__}.{found.__name__}, whose "
            f"kind is {kind!r}: the entry-point name, the module name and kind must be one key"
        )
    return found
