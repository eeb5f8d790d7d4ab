"""A destination from another package: registered through the same entry-point group as the
built-ins, or named `package.module:Class`, checked like them, and held to the same
conformance suite against its own fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cohortsync.config.loader import PROJECT_FILE, parse_project, parse_segments
from cohortsync.destinations.base import Change, DestinationContext
from cohortsync.destinations.hashing import sha256_hex
from cohortsync.destinations.registry import (
    DestinationTypeError,
    destination_class,
    known_types,
)
from cohortsync.errors import ConfigError
from cohortsync.sync.configure import SyncSetup, sync_setup
from tests.conftest import PROJECT_YAML
from tests.destinations.conformance import CLOCK_AT, Conformance, Subject
from tests.destinations.thirdparty.acme_lists import AcmeListsConfig, AcmeListsDestination
from tests.destinations.thirdparty.fake import AcmeListsFake

ACME = "tests.destinations.thirdparty.acme_lists:AcmeListsDestination"


def install(site: Path, name: str, *points: str) -> None:
    """Write a distribution's metadata, as pip would, registering `points` (`name = value`)."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(points)
    (info / "entry_points.txt").write_text(f"[cohortsync.destinations]\n{lines}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path where a test installs distributions."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def setup_of(tmp_path: Path, yaml: str) -> SyncSetup:
    loaded = parse_project(PROJECT_YAML + yaml, tmp_path / PROJECT_FILE)
    return sync_setup(loaded, parse_segments(loaded))


AUDIENCE_TO = """\
segments:
  cart_1h: {{event: added_to_cart, within: 1h}}
audiences:
  cio_cart_1h:
    segment: cart_1h
    identifiers: [email]
    destinations: [acme]
destinations:
  acme: {{type: {type}, url: "https://api.acme.example", token: t}}
"""


def test_an_installed_package_adds_a_type_the_project_can_use(tmp_path: Path, site: Path) -> None:
    assert "acme_lists" not in known_types()
    install(site, "acme_lists", f"acme_lists = {ACME}")

    assert "acme_lists" in known_types()
    assert destination_class("acme_lists") is AcmeListsDestination
    setup = setup_of(tmp_path, AUDIENCE_TO.format(type="acme_lists"))
    assert setup.classes["acme"] is AcmeListsDestination
    [route] = setup.routes
    assert (route.destination, route.include_holdout) == ("acme", False)  # an ad platform


def test_the_module_and_class_form_needs_no_registration(tmp_path: Path) -> None:
    setup = setup_of(tmp_path, AUDIENCE_TO.format(type=f'"{ACME}"'))
    assert setup.classes["acme"] is AcmeListsDestination


def test_an_installed_type_is_named_where_its_capabilities_fit(tmp_path: Path, site: Path) -> None:
    """Messages list the alternatives from capabilities, so an installed type is among them."""
    install(site, "scripted", "scripted_ads = tests.sync.scripted:ScriptedAds")
    yaml = AUDIENCE_TO.format(type=f'"{ACME}"') + (
        "conversions:\n  - {event: order_completed, as: Purchase, destinations: [acme]}\n"
    )
    with pytest.raises(ConfigError) as caught:
        setup_of(tmp_path, yaml)
    assert "destination 'acme' (acme_lists) does not take conversions" in str(caught.value)
    assert "meta_capi, scripted_ads, segment, tiktok_events, warehouse or webhook" in str(
        caught.value
    )


def test_an_entry_point_name_other_than_the_kind_is_refused(tmp_path: Path, site: Path) -> None:
    install(site, "acme", f"acme = {ACME}")
    with pytest.raises(ConfigError) as caught:
        setup_of(tmp_path, AUDIENCE_TO.format(type="acme"))
    assert "entry point 'acme' loads" in str(caught.value)
    assert "whose kind is 'acme_lists'" in str(caught.value)


def test_a_type_registered_twice_is_refused_not_picked(site: Path) -> None:
    install(site, "impostor", f"webhook = {ACME}")
    with pytest.raises(DestinationTypeError, match="registered twice"):
        destination_class("webhook")


def test_a_class_without_capabilities_is_refused_with_the_fix(tmp_path: Path) -> None:
    legacy = '"tests.destinations.thirdparty.odd:LegacyDestination"'
    with pytest.raises(ConfigError) as caught:
        setup_of(tmp_path, AUDIENCE_TO.format(type=legacy))
    assert "declares no capabilities" in str(caught.value)
    assert "capabilities = Capabilities(" in str(caught.value)


def test_a_module_that_does_not_import_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        setup_of(tmp_path, AUDIENCE_TO.format(type='"acme_nowhere.lists:Lists"'))
    assert "cannot import 'acme_nowhere.lists'" in str(caught.value)


# --- the conformance suite, as the package's own tests would run it ---------------------------


class AcmeListsSubject(Subject):
    """The plug-in against its fake; members are the email hashes the fake holds."""

    def __init__(self, fake: AcmeListsFake, http: httpx.Client, tmp_path: Path) -> None:
        self.fake = fake
        config = AcmeListsConfig.model_validate({"url": fake.url, "token": fake.token})
        context = DestinationContext("acme", tmp_path, http, lambda: CLOCK_AT)
        self.destination = AcmeListsDestination(config, context)

    def members(self, audience: str) -> set[str]:
        return self.fake.members(audience)

    def key(self, record: Change) -> str:
        return sha256_hex(record.identifiers["email"])

    def state(self) -> object:
        return self.fake.state()

    def outgoing(self) -> str:
        return "\n".join(item.text() for item in self.fake.log)

    def fail(self, status: int, retry_after: float | None = None) -> None:
        self.fake.fail(status, retry_after=retry_after)

    def recover(self) -> None:
        self.fake.faults.clear()


class TestAcmeListsConformance(Conformance):
    @pytest.fixture
    def subject(self, http: httpx.Client, tmp_path: Path) -> Iterator[AcmeListsSubject]:
        with AcmeListsFake().serving() as fake:
            yield AcmeListsSubject(fake, http, tmp_path)
