"""Google Customer Match against the Data Manager fake over real HTTP: lists found or created by
exact name, members hashed Google's way, a bad record isolated by splitting, the quota kept,
OAuth refreshed, diagnostics polled until terminal."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from cohortsync.destinations.base import AuthError, PermanentError, TransientError
from cohortsync.destinations.google_api import RequestLimiter
from cohortsync.destinations.google_customer_match import HOLDOUT, NO_IDENTIFIER
from cohortsync.destinations.google_identifiers import hash_google
from cohortsync.destinations.hashing import sha256_hex
from tests.destinations.conformance import CLOCK_AT, Conformance, Records
from tests.destinations.google_subjects import CustomerMatchSubject, MovableClock, customer_match
from tests.fakes.google_data_manager import GoogleDataManagerFake

AUDIENCE = "cio_cart_abandon_6h"
RECORDS = Records(start=CLOCK_AT, step=timedelta(0))
change = RECORDS.change
batch = RECORDS.batch


def email_hash(n: int) -> str:
    return sha256_hex(f"shopper.{n}@example.com")


def test_the_list_is_created_once_under_its_exact_name_and_reused(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    google_fake.create_user_list(AUDIENCE + "_old")
    dest = customer_match(google_fake, tmp_path, http, membership_duration_days=90)
    dest.apply(batch(change(1), batch_id="b-1"))
    dest.apply(batch(change(2), batch_id="b-2"))
    customer_match(google_fake, tmp_path, http).apply(batch(change(3), batch_id="b-3"))

    created = google_fake.log.to("/userLists", "POST")
    assert len(created) == 1
    body = created[0].json()
    assert body["displayName"] == AUDIENCE
    assert body["membershipDuration"] == "7776000s"
    assert body["ingestedUserListInfo"]["uploadKeyTypes"] == ["CONTACT_ID"]
    assert google_fake.members(AUDIENCE) == {email_hash(n) for n in (1, 2, 3)}
    assert google_fake.members(AUDIENCE + "_old") == set()


def test_an_existing_list_is_found_across_pages(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    for n in range(1_050):
        google_fake.create_user_list(f"other_{n}")
    existing = google_fake.create_user_list(AUDIENCE)
    customer_match(google_fake, tmp_path, http).apply(batch(change(1)))
    assert google_fake.user_lists()[AUDIENCE] == existing
    assert len(google_fake.log.to("/userLists", "GET")) == 2
    assert google_fake.log.to("/userLists", "POST") == []


def test_requests_have_the_documented_shape(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    dest = customer_match(google_fake, tmp_path, http)
    dest.apply(batch(change(1), change(2, "remove", who=5)))
    (ingest,) = google_fake.log.to("audienceMembers:ingest")
    (remove,) = google_fake.log.to("audienceMembers:remove")
    body = ingest.json()
    assert body["encoding"] == "HEX"
    assert body["termsOfService"] == {"customerMatchTermsOfServiceStatus": "ACCEPTED"}
    assert body["consent"] == {
        "adUserData": "CONSENT_GRANTED",
        "adPersonalization": "CONSENT_GRANTED",
    }
    assert body["destinations"] == [
        {
            "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
            "productDestinationId": google_fake.user_lists()[AUDIENCE],
        }
    ]
    assert body["audienceMembers"] == [
        {
            "userData": {
                "userIdentifiers": [
                    {"emailAddress": email_hash(1)},
                    {"phoneNumber": sha256_hex("+16505550001")},
                ]
            }
        }
    ]
    assert set(remove.json()) == {"destinations", "audienceMembers", "encoding"}
    assert ingest.header(
        "authorization",
    ).startswith("Bearer ya29.")


def test_gmail_addresses_are_sent_as_google_normalises_them(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    google_fake.known_people([{"email": "Jo.Ann+shop@GMail.com"}, {"email": "a.b+c@example.com"}])
    dest = customer_match(google_fake, tmp_path, http)
    result = dest.apply(
        batch(change(1, email="jo.ann+shop@gmail.com"), change(2, email="a.b+c@example.com"))
    )
    assert dict(result.rejected) == {}
    assert google_fake.members(AUDIENCE) == {
        sha256_hex("joann@gmail.com"),
        sha256_hex("a.b+c@example.com"),
    }


def test_holdout_and_unmatchable_members_are_refused_before_sending(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    dest = customer_match(google_fake, tmp_path, http)
    result = dest.apply(
        batch(change(1, holdout=True), change(2, ids={"user_id": "u-2"}), change(3))
    )
    assert dict(result.rejected) == {1: HOLDOUT, 2: NO_IDENTIFIER}
    assert google_fake.members(AUDIENCE) == {email_hash(3)}


def test_adds_need_the_terms_of_service_accepted(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    dest = customer_match(google_fake, tmp_path, http, accept_terms_of_service=False)
    with pytest.raises(PermanentError, match="accept_terms_of_service"):
        dest.apply(batch(change(1)))
    assert google_fake.log.to("audienceMembers") == []


def test_a_dry_run_counts_what_apply_would_refuse_and_sends_nothing(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    changes = batch(change(1, holdout=True), change(2, ids={"user_id": "u-2"}), change(3))
    found = customer_match(google_fake, tmp_path, http).preview(changes)
    assert dict(found.refused) == {1: HOLDOUT, 2: NO_IDENTIFIER}
    (request,) = found.requests
    assert len(request["body"]["audienceMembers"]) == 1
    unsigned = customer_match(google_fake, tmp_path, http, accept_terms_of_service=False)
    refused = unsigned.preview(changes)  # apply refuses the whole batch: so does the dry run
    assert refused.requests == [] and set(refused.refused) == {1, 2, 3}
    assert refused.refused[3].startswith("accept_terms_of_service is not set")
    assert google_fake.log.to("audienceMembers") == []


def test_one_bad_record_in_1000_is_isolated_and_dead_lettered_with_googles_reason(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    google_fake.known_people([{"email": "Bad.Person@Example.com"}])
    badly_hashed = sha256_hex("Bad.Person@Example.com")  # hashed upstream, not normalised
    changes = [change(n, ids={"email": f"shopper.{n}@example.com"}) for n in range(1_000)]
    changes[637] = change(637, ids={"email": badly_hashed})
    dest = customer_match(google_fake, tmp_path, http)
    result = dest.apply(batch(*changes))

    assert set(result.rejected) == {637}
    assert "INVALID_FORMAT_NOT_NORMALIZED" in result.rejected[637]
    assert "Bad.Person" not in result.rejected[637]
    assert dict(result.retry) == {}
    assert google_fake.members(AUDIENCE) == {email_hash(n) for n in range(1_000) if n != 637}
    ingests = google_fake.log.to("audienceMembers:ingest")
    # one refused request of 1,000, then two halves per level down to the single record
    assert len(ingests) == result.stats["requests"] == 21
    assert [r.status for r in ingests].count(200) == 10


def test_a_request_level_refusal_is_not_split(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    dest = customer_match(google_fake, tmp_path, http, accept_terms_of_service=True)
    google_fake.fail(
        400,
        times=1,
        path="audienceMembers:ingest",
        body={
            "error": {
                "code": 400,
                "status": "INVALID_ARGUMENT",
                "message": "EU political advertising declaration required",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "EU_POLITICAL_ADVERTISING_DECLARATION_REQUIRED",
                    }
                ],
            }
        },
    )
    with pytest.raises(PermanentError, match="EU_POLITICAL_ADVERTISING_DECLARATION_REQUIRED"):
        dest.apply(batch(*(change(n) for n in range(50))))
    assert len(google_fake.log.to("audienceMembers:ingest")) == 1


def test_a_list_deleted_on_the_platform_is_made_again(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    dest = customer_match(google_fake, tmp_path, http)
    dest.lists._ids[AUDIENCE] = "404"  # the list this process knew was deleted
    with pytest.raises(TransientError, match="INVALID_USER_LIST_ID"):
        dest.apply(batch(*(change(n) for n in range(50))))
    assert len(google_fake.log.to("audienceMembers:ingest")) == 1
    dest.apply(batch(*(change(n) for n in range(50))))
    assert google_fake.members(AUDIENCE) == {email_hash(n) for n in range(50)}


def test_a_manager_account_is_named_as_login_account(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    dest = customer_match(google_fake, tmp_path, http, login_account_id="9876543210")
    dest.apply(batch(change(1)))
    assert {r.header("login-account") for r in google_fake.log.to("/userLists")} == {
        "accountTypes/GOOGLE_ADS/accounts/9876543210"
    }
    (ingest,) = google_fake.log.to("audienceMembers:ingest")
    assert ingest.json()["destinations"][0]["loginAccount"] == {
        "accountType": "GOOGLE_ADS",
        "accountId": "9876543210",
    }


def test_a_transient_failure_after_acknowledged_halves_retries_only_the_rest(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    google_fake.known_people([{"email": "Bad.Person@Example.com"}])
    changes = [change(n) for n in range(8)]
    changes[0] = change(0, ids={"email": sha256_hex("Bad.Person@Example.com")})
    dest = customer_match(google_fake, tmp_path, http)
    dest.lists.id_of(AUDIENCE)
    # whole (400), left half (400), left quarter (400), record 0 (400), record 1 ok, then 503
    google_fake.script([200, 200, 200, 200, 200, 503], path="audienceMembers:ingest")
    result = dest.apply(batch(*changes))
    assert set(result.rejected) == {0}
    assert set(result.retry) == {2, 3, 4, 5, 6, 7}
    assert google_fake.members(AUDIENCE) == {email_hash(1)}


def test_the_client_keeps_the_quota_so_google_never_throttles(
    tmp_path: Path, http: httpx.Client
) -> None:
    with GoogleDataManagerFake(quota_per_minute=4, quota_window=1.0).serving() as fake:
        fake.create_user_list(AUDIENCE)
        dest = customer_match(fake, tmp_path, http)
        dest.client.limiter = RequestLimiter(4, window=1.0)
        for n in range(10):
            dest.apply(batch(change(n), batch_id=f"b-{n}"))
        assert fake.throttled == 0
        assert dest.client.limiter.waited > 0
        assert fake.members(AUDIENCE) == {email_hash(n) for n in range(10)}


def test_over_quota_google_answers_429_and_the_batch_is_transient(
    tmp_path: Path, http: httpx.Client
) -> None:
    with GoogleDataManagerFake(quota_per_minute=2, quota_window=60.0).serving() as fake:
        fake.create_user_list(AUDIENCE)
        dest = customer_match(fake, tmp_path, http)
        dest.client.limiter = RequestLimiter(1_000, window=1.0)  # as if another process used it
        dest.apply(batch(change(1), batch_id="b-1"))
        dest.apply(batch(change(2), batch_id="b-2"))
        with pytest.raises(TransientError, match="RESOURCE_EXHAUSTED"):
            dest.apply(batch(change(3), batch_id="b-3"))


def test_the_token_is_refreshed_before_it_expires_and_after_a_401(
    tmp_path: Path, http: httpx.Client
) -> None:
    with GoogleDataManagerFake(token_lifetime=200).serving() as fake:
        dest = customer_match(fake, tmp_path, http)
        dest.apply(batch(change(1), batch_id="b-1"))
        dest.apply(batch(change(2), batch_id="b-2"))
        # google-auth refreshes a token that expires within its threshold (~3.75 min)
        assert len(fake.log.to("/token")) >= 2
        fake.token_lifetime = 3600
        dest.apply(batch(change(2), batch_id="b-2"))
        fake.revoke_tokens()
        with pytest.raises(AuthError):
            dest.apply(batch(change(3), batch_id="b-3"))
        before = len(fake.log.to("/token"))
        dest.apply(batch(change(3), batch_id="b-3"))
        assert len(fake.log.to("/token")) == before + 1
        assert fake.members(AUDIENCE) == {email_hash(n) for n in (1, 2, 3)}


def test_a_refused_refresh_token_is_an_auth_error_without_secrets(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    dest = customer_match(google_fake, tmp_path, http, refresh_token="1//revoked-token")
    with pytest.raises(AuthError) as refused:
        dest.apply(batch(change(1)))
    assert "revoked-token" not in str(refused.value)
    assert google_fake.client_secret not in str(refused.value)


def test_a_service_account_key_file_authenticates(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "client_email": "sync@project.iam.gserviceaccount.com",
        "private_key": pem,
        "private_key_id": "k1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    (tmp_path / "key.json").write_text(__import__("json").dumps(info))
    dest = customer_match(
        google_fake,
        tmp_path,
        http,
        refresh_token=None,
        client_id=None,
        client_secret=None,
        service_account_file="key.json",
    )
    dest.apply(batch(change(1)))
    assert google_fake.members(AUDIENCE) == {email_hash(1)}
    (grant,) = google_fake.log.to("/token")
    assert b"jwt-bearer" in grant.body


def test_match_rate_is_polled_from_the_delay_until_terminal(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    clock = MovableClock(CLOCK_AT)
    google_fake.now = CLOCK_AT
    dest = customer_match(google_fake, tmp_path, http, clock)
    dest.apply(batch(change(1), change(2), change(3), batch_id="b-1"))
    assert dest.collect_diagnostics() == {}
    assert google_fake.log.to("requestStatus") == []  # not before the delay

    clock.now += timedelta(minutes=30)
    google_fake.now = CLOCK_AT + timedelta(minutes=10)  # Google still processing
    assert dest.collect_diagnostics() == {}
    assert len(google_fake.log.to("requestStatus")) == 1
    clock.now += timedelta(minutes=10)
    assert dest.collect_diagnostics() == {}  # backing off: not asked again yet
    assert len(google_fake.log.to("requestStatus")) == 1

    clock.now += timedelta(minutes=30)
    google_fake.now = CLOCK_AT + timedelta(hours=2)
    google_fake.error_counts = {"PROCESSING_ERROR_REASON_INVALID_EMAIL": 1}
    assert dest.collect_diagnostics() == {
        "b-1": {
            "records_processed": 3,
            "match_rate_low": 41,
            "match_rate_high": 50,
            "error_records": 1,
            "error:PROCESSING_ERROR_REASON_INVALID_EMAIL": 1,
        }
    }
    assert dest.collect_diagnostics() == {}  # answered once, then forgotten


class TestGoogleCustomerMatchConformance(Conformance):
    @pytest.fixture
    def subject(
        self, google_fake: GoogleDataManagerFake, http: httpx.Client, tmp_path: Path
    ) -> CustomerMatchSubject:
        return CustomerMatchSubject(google_fake, http, tmp_path)


def test_hash_google_matches_the_documented_vectors() -> None:
    assert hash_google("email", "cloudy.sanfrancisco+shopping@gmail.com") == sha256_hex(
        "cloudysanfrancisco@gmail.com"
    )


def test_both_types_are_registered_as_entry_points_under_their_kind() -> None:
    import tomllib

    from cohortsync.destinations.registry import destination_class

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    points = project["project"]["entry-points"]["cohortsync.destinations"]
    for name in ("google_customer_match", "google_conversions"):
        assert destination_class(points[name]).kind == name


@pytest.mark.parametrize(
    ("settings", "wrong"),
    [
        ({"operating_account_id": "12-34"}, "10 digits"),
        ({"refresh_token": None}, "service_account_file, or refresh_token"),
        ({"service_account_file": "key.json"}, "not both"),
        ({"requests_per_minute": 0}, "at least 1"),
        ({"base_url": "ftp://x"}, "http(s)"),
    ],
)
def test_settings_are_checked(settings: dict[str, object], wrong: str) -> None:
    from pydantic import ValidationError

    from cohortsync.destinations.google_customer_match import GoogleCustomerMatchConfig

    base = {
        "operating_account_id": "123-456-7890",
        "refresh_token": "1//r",
        "client_id": "c",
        "client_secret": "s",
    }
    with pytest.raises(ValidationError, match=re.escape(wrong)):
        GoogleCustomerMatchConfig(**{**base, **settings})
    assert "1//r" not in str(GoogleCustomerMatchConfig(**base))


def test_a_timeout_is_transient_and_a_lost_acknowledgement_resends_harmlessly(
    google_fake: GoogleDataManagerFake, tmp_path: Path, http: httpx.Client
) -> None:
    dest = customer_match(google_fake, tmp_path, http)
    dest.lists.id_of(AUDIENCE)
    google_fake.timeout(delay=3.0, path="audienceMembers:ingest")
    with pytest.raises(TransientError, match="no answer"):
        dest.apply(batch(change(1), change(2), batch_id="slow-1"))
    assert google_fake.members(AUDIENCE) == set()
    google_fake.timeout(delay=3.0, processed=True, path="audienceMembers:ingest")
    with pytest.raises(TransientError):
        dest.apply(batch(change(1), change(2), batch_id="slow-1"))
    before = google_fake.member_sets()
    dest.apply(batch(change(1), change(2), batch_id="slow-1"))
    assert google_fake.member_sets() == before
    assert google_fake.members(AUDIENCE) == {email_hash(1), email_hash(2)}
