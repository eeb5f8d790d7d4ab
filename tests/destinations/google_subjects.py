"""The Google Data Manager destinations pointed at their contract fake, for the tests."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from cohortsync.destinations.base import Change, DestinationContext
from cohortsync.destinations.google_conversions import (
    GoogleConversionsConfig,
    GoogleConversionsDestination,
)
from cohortsync.destinations.google_customer_match import (
    GoogleCustomerMatchConfig,
    GoogleCustomerMatchDestination,
)
from cohortsync.destinations.google_identifiers import hash_google
from tests.destinations.conformance import CLOCK_AT, Subject
from tests.fakes.google_data_manager import GoogleDataManagerFake


class MovableClock:
    """The destination's clock, which a test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def credentials(fake: GoogleDataManagerFake) -> dict[str, Any]:
    """Settings pointing a destination at the fake with the fake's OAuth client."""
    return {
        "operating_account_id": fake.account_id[:3]
        + "-"
        + fake.account_id[3:6]
        + "-"
        + fake.account_id[6:],
        "refresh_token": fake.refresh_token,
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "token_uri": fake.token_url,
        "base_url": fake.base_url,
        "ad_user_data_consent": "CONSENT_GRANTED",
        "ad_personalization_consent": "CONSENT_GRANTED",
    }


def customer_match(
    fake: GoogleDataManagerFake,
    tmp_path: Path,
    http: httpx.Client,
    clock: MovableClock | None = None,
    **overrides: Any,
) -> GoogleCustomerMatchDestination:
    """`google_customer_match` pointed at the fake."""
    config = GoogleCustomerMatchConfig(
        **{**credentials(fake), "accept_terms_of_service": True, **overrides}
    )
    context = DestinationContext("gads", tmp_path, http, clock or MovableClock(CLOCK_AT))
    return GoogleCustomerMatchDestination(config, context)


def conversions(
    fake: GoogleDataManagerFake,
    tmp_path: Path,
    http: httpx.Client,
    clock: MovableClock | None = None,
    **overrides: Any,
) -> GoogleConversionsDestination:
    """`google_conversions` pointed at the fake's conversion action."""
    action = next(iter(fake.conversion_action_ids))
    config = GoogleConversionsConfig(
        **{**credentials(fake), "conversion_action_id": action, **overrides}
    )
    context = DestinationContext("gconv", tmp_path, http, clock or MovableClock(CLOCK_AT))
    return GoogleConversionsDestination(config, context)


class GoogleSubject(Subject):
    """What both Google destinations share against the fake."""

    fake: GoogleDataManagerFake

    def outgoing(self) -> str:
        return "\n".join(item.text() for item in self.fake.log)

    def fail(self, status: int, retry_after: float | None = None) -> None:
        """The API fails (the token endpoint, which google-auth retries itself, does not)."""
        self.fake.fail(status, retry_after=retry_after, path="/v1/")

    def recover(self) -> None:
        self.fake.faults.clear()


class CustomerMatchSubject(GoogleSubject):
    """Customer Match against the fake; members are the hashed emails a list holds."""

    def __init__(self, fake: GoogleDataManagerFake, http: httpx.Client, tmp_path: Path) -> None:
        self.fake = fake
        fake.now = CLOCK_AT
        self.destination = customer_match(fake, tmp_path, http)

    def members(self, audience: str) -> set[str]:
        if audience not in self.fake.user_lists():
            return set()
        return self.fake.members(audience)

    def key(self, record: Change) -> str:
        return hash_google("email", record.identifiers["email"]) or ""

    def state(self) -> object:
        return self.fake.member_sets()


class ConversionsSubject(GoogleSubject):
    """Conversions against the fake; a conversion counts once per transaction id."""

    def __init__(self, fake: GoogleDataManagerFake, http: httpx.Client, tmp_path: Path) -> None:
        self.fake = fake
        fake.now = CLOCK_AT
        self.destination = conversions(fake, tmp_path, http)

    def members(self, audience: str) -> set[str]:
        return set()

    def conversions(self) -> Counter[str]:
        return Counter(str(e["transactionId"]) for e in self.fake.effective_events)

    def state(self) -> object:
        return self.fake.effective_events
