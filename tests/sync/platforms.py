"""Ad platforms the sync tests run against, each a contract fake behind one small adapter: its
project YAML, its faults, what it holds and the operations it applied, in order."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from tests.fakes.base import FakeServer
from tests.fakes.google_data_manager import GoogleDataManagerFake
from tests.fakes.meta import MetaFake

AUDIENCE_DESTINATION = "ads_audiences"
CONVERSION_DESTINATION = "ads_conversions"
GOOGLE_MATCH = "cohortsync.destinations.google_customer_match:GoogleCustomerMatchDestination"
GOOGLE_CONVERSIONS = "cohortsync.destinations.google_conversions:GoogleConversionsDestination"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Platform(ABC):
    """One ad platform's fake, as the sync tests see it."""

    name: str
    fake: FakeServer

    @abstractmethod
    def destinations_yaml(self) -> str:
        """The `destinations:` entries `ads_audiences` and `ads_conversions`, indented by 2."""

    @abstractmethod
    def fail(self, status: int, times: int, retry_after: float | None = None) -> None:
        """Make the platform's API (not its token endpoint) answer `status` `times` times."""

    @abstractmethod
    def members(self, audience: str) -> set[str]:
        """SHA-256 of the emails the platform's audience holds."""

    @abstractmethod
    def applied(self) -> list[tuple[str, list[str]]]:
        """(op, email hashes) of every accepted request that changed members, resends once."""

    @abstractmethod
    def counted_conversions(self) -> int:
        """Conversions the platform counts (each once)."""

    @abstractmethod
    def known_people(self, people: list[dict[str, str]]) -> None:
        """Register raw identities whose badly normalised hashes the fake refuses."""

    def attempts(self) -> int:
        """Requests that reached the platform's API."""
        return len([item for item in self.fake.log if item.path != "/token"])

    def set_now(self, now: datetime) -> None:
        self.fake.now = now


class MetaPlatform(Platform):
    name = "meta"

    def __init__(self, fake: MetaFake) -> None:
        self.fake: MetaFake = fake

    def destinations_yaml(self) -> str:
        fake = self.fake
        return f"""\
  {AUDIENCE_DESTINATION}:
    type: meta_custom_audience
    ad_account_id: act_{fake.ad_account_id}
    access_token: {fake.token}
    api_url: {fake.base_url}
  {CONVERSION_DESTINATION}:
    type: meta_capi
    pixel_id: "{fake.pixel_id}"
    access_token: {fake.token}
    api_url: {fake.base_url}
    action_source: system_generated
"""

    def fail(self, status: int, times: int, retry_after: float | None = None) -> None:
        self.fake.fail(status, times=times, retry_after=retry_after)

    def members(self, audience: str) -> set[str]:
        return self.fake.members(audience)

    def applied(self) -> list[tuple[str, list[str]]]:
        seen: set[tuple[Any, ...]] = set()
        found = []
        for batch in self.fake.batches:
            key = (batch.audience_id, batch.op, batch.session_id, batch.batch_seq)
            if key not in seen:
                seen.add(key)
                found.append((batch.op, [row["EMAIL"] for row in batch.rows]))
        return found

    def counted_conversions(self) -> int:
        return len(self.fake.effective_events)

    def known_people(self, people: list[dict[str, str]]) -> None:
        self.fake.known_people(people)


class GooglePlatform(Platform):
    name = "google"

    def __init__(self, fake: GoogleDataManagerFake) -> None:
        self.fake: GoogleDataManagerFake = fake

    def destinations_yaml(self) -> str:
        fake = self.fake
        action = next(iter(fake.conversion_action_ids))
        common = f"""\
    operating_account_id: "{fake.account_id}"
    refresh_token: "{fake.refresh_token}"
    client_id: "{fake.client_id}"
    client_secret: "{fake.client_secret}"
    token_uri: {fake.token_url}
    base_url: {fake.base_url}
    ad_user_data_consent: CONSENT_GRANTED
    ad_personalization_consent: CONSENT_GRANTED
"""
        return (
            f"  {AUDIENCE_DESTINATION}:\n    type: {GOOGLE_MATCH}\n    accept_terms_of_service: "
            f"true\n{common}  {CONVERSION_DESTINATION}:\n    type: {GOOGLE_CONVERSIONS}\n"
            f'    conversion_action_id: "{action}"\n{common}'
        )

    def fail(self, status: int, times: int, retry_after: float | None = None) -> None:
        self.fake.fail(status, times=times, retry_after=retry_after, path="/v1/")

    def members(self, audience: str) -> set[str]:
        if audience not in self.fake.user_lists():
            return set()
        return self.fake.members(audience)

    def applied(self) -> list[tuple[str, list[str]]]:
        seen: set[bytes] = set()
        found = []
        for item in self.fake.log:
            if "audienceMembers:" not in item.path or item.status != 200 or item.fault:
                continue
            if item.body in seen:
                continue
            seen.add(item.body)
            op = "add" if item.path.endswith(":ingest") else "remove"
            emails = [
                identifier["emailAddress"]
                for member in item.json()["audienceMembers"]
                for identifier in member["userData"]["userIdentifiers"]
                if "emailAddress" in identifier
            ]
            found.append((op, emails))
        return found

    def counted_conversions(self) -> int:
        return len(self.fake.effective_events)

    def known_people(self, people: list[dict[str, str]]) -> None:
        self.fake.known_people(people)


@contextmanager
def serving(name: str) -> Iterator[Platform]:
    """The named platform's fake, running."""
    if name == "meta":
        with MetaFake().serving() as meta:
            yield MetaPlatform(meta)
    else:
        with GoogleDataManagerFake().serving() as google:
            yield GooglePlatform(google)
