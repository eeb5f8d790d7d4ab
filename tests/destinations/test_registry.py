"""The built-in destinations register exactly as a plug-in must: one key for the `type:`, the
entry point, the module and the class, and capabilities instead of loose class attributes."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from cohortsync.destinations.base import Capabilities, Destination
from cohortsync.destinations.registry import GROUP, destination_class, known_types

BUILT_IN = {
    "warehouse",
    "files",
    "webhook",
    "segment",
    "meta_custom_audience",
    "meta_capi",
    "tiktok_audience",
    "tiktok_events",
    "google_customer_match",
    "google_conversions",
}
LOOSE = ("accepts", "ad_platform", "max_batch", "audiences", "conversions")


def test_every_built_in_is_registered_in_the_plug_in_group() -> None:
    ours = {
        p.name: p.value for p in entry_points(group=GROUP) if p.module.startswith("cohortsync.")
    }
    assert set(ours) == BUILT_IN
    assert set(known_types()) >= BUILT_IN


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_type_module_entry_point_and_class_share_one_key(name: str) -> None:
    cls = destination_class(name)
    prefix = "".join(part.title() for part in name.split("_"))
    assert cls.__module__ == f"cohortsync.destinations.{name}"
    assert cls.__name__ == f"{prefix}Destination"
    assert cls.config_model.__name__ == f"{prefix}Config"
    assert cls.kind == name
    assert isinstance(cls.capabilities, Capabilities)
    assert not [attr for attr in LOOSE if attr in vars(cls)], "capabilities, not loose attributes"
    assert issubclass(cls, Destination)


def test_an_unknown_type_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        destination_class("facebook")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"identifiers": ()}, "at least one identifier kind"),
        ({"identifiers": ("email",), "audiences": False}, "audiences, conversions or both"),
        ({"identifiers": ("email",), "max_batch": 0}, "max_batch must be at least 1"),
    ],
)
def test_capabilities_that_cannot_work_are_refused(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Capabilities(**fields)  # type: ignore[arg-type]
