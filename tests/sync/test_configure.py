"""The project check asks each destination's capabilities whether an audience or a conversion
can go to it, and names the fix with `file:line`."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohortsync.config.loader import PROJECT_FILE, parse_project, parse_segments
from cohortsync.errors import ConfigError
from cohortsync.sync.configure import SyncSetup, sync_setup
from tests.conftest import PROJECT_YAML

SEGMENTS = """\
segments:
  cart_1h: {event: added_to_cart, within: 1h}
audiences:
  cio_cart_1h:
    segment: cart_1h
    identifiers: [email]
    destinations: [target]
"""

AUDIENCE_TYPES = (
    "files, google_customer_match, meta_custom_audience, segment, tiktok_audience, warehouse or "
    "webhook"
)
"""The built-in types that take audiences and can remove members, as errors list them."""
CONVERSION_TYPES = "google_conversions, meta_capi, segment, tiktok_events, warehouse or webhook"
"""The built-in types that take conversions."""


def setup_of(tmp_path: Path, yaml: str) -> SyncSetup:
    loaded = parse_project(PROJECT_YAML + yaml, tmp_path / PROJECT_FILE)
    return sync_setup(loaded, parse_segments(loaded))


def refusal(tmp_path: Path, yaml: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        setup_of(tmp_path, yaml)
    return caught.value


def line_of(yaml: str, text: str) -> int:
    return (PROJECT_YAML + yaml).splitlines().index(text) + 1


def test_an_audience_sent_to_a_conversions_only_destination_names_those_that_take_audiences(
    tmp_path: Path,
) -> None:
    yaml = SEGMENTS + "destinations:\n  target: {type: meta_capi, access_token: t, pixel_id: '1'}\n"
    error = refusal(tmp_path, yaml)
    assert "destination 'target' (meta_capi) takes conversions, not audiences" in error.message
    assert AUDIENCE_TYPES in error.message
    assert error.line == line_of(yaml, "    destinations: [target]")


def test_an_audience_sent_where_members_cannot_be_removed_is_refused(tmp_path: Path) -> None:
    add_only = '"tests.destinations.thirdparty.odd:AddOnlyDestination"'
    yaml = SEGMENTS + f"destinations:\n  target: {{type: {add_only}}}\n"
    error = refusal(tmp_path, yaml)
    assert "destination 'target' (add_only) cannot remove members" in error.message
    assert "people leaving cio_cart_1h would stay in it" in error.message
    assert f"({AUDIENCE_TYPES})" in error.message
    assert error.line == line_of(yaml, "    destinations: [target]")


def test_an_ad_platform_that_matches_on_none_of_the_audience_identifiers_is_refused(
    tmp_path: Path,
) -> None:
    meta = "{type: meta_custom_audience, access_token: t, ad_account_id: '1'}"
    yaml = SEGMENTS.replace("identifiers: [email]", "identifiers: [anonymous_id]") + (
        f"destinations:\n  target: {meta}\n"
    )
    error = refusal(tmp_path, yaml)
    assert "audience 'cio_cart_1h' gives ad platforms only anonymous_id" in error.message
    assert "matches on email, phone, user_id" in error.message
    assert error.line == line_of(yaml, "    identifiers: [anonymous_id]")


def test_the_team_s_own_systems_get_every_identifier_whatever_the_audience_lists(
    tmp_path: Path,
) -> None:
    yaml = SEGMENTS.replace("identifiers: [email]", "identifiers: [anonymous_id]") + (
        "destinations:\n  target: {type: segment, write_key: k}\n"
    )
    [route] = setup_of(tmp_path, yaml).routes
    assert route.include_holdout


def test_conversions_sent_where_they_are_not_taken_name_those_that_take_them(
    tmp_path: Path,
) -> None:
    yaml = SEGMENTS + (
        "destinations:\n  target: {type: files, path: out}\n"
        "conversions:\n  - {event: order_completed, as: Purchase, destinations: [target]}\n"
    )
    error = refusal(tmp_path, yaml)
    assert "destination 'target' (files) does not take conversions" in error.message
    assert CONVERSION_TYPES in error.message
