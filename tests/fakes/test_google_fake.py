"""The Data Manager fake keeps the contract of more-destinations.md §1: request shape, OAuth,
hashed identifiers, limits, fast-fail on one bad record, quota, diagnostics, user lists."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.fakes.google_data_manager import SCOPE, GoogleDataManagerFake

ACCOUNT = "1234567890"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def call(
    fake: GoogleDataManagerFake,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    token: str | None = "valid",
    params: dict[str, str] | None = None,
) -> httpx.Response:
    headers = {}
    if token is not None:
        headers["Authorization"] = "Bearer " + (fake.issue_token() if token == "valid" else token)
    return httpx.request(
        method, fake.base_url + path, json=body, headers=headers, params=params, timeout=10
    )


def reason(response: httpx.Response) -> str:
    """The ErrorInfo reason of a google.rpc.Status body."""
    details = response.json()["error"]["details"]
    return next(d["reason"] for d in details if d["@type"].endswith("ErrorInfo"))


def violation(response: httpx.Response) -> str:
    details = response.json()["error"]["details"]
    bad = next(d for d in details if d["@type"].endswith("BadRequest"))
    return str(bad["fieldViolations"][0]["field"])


def destination(list_id: str) -> dict[str, Any]:
    return {
        "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": ACCOUNT},
        "productDestinationId": list_id,
    }


def member(*emails: str) -> dict[str, Any]:
    return {"userData": {"userIdentifiers": [{"emailAddress": e} for e in emails]}}


def ingest_body(list_id: str, members: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "destinations": [destination(list_id)],
        "audienceMembers": members,
        "encoding": "HEX",
        "termsOfService": {"customerMatchTermsOfServiceStatus": "ACCEPTED"},
        "consent": {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"},
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


@pytest.fixture
def fake(google_fake: GoogleDataManagerFake) -> GoogleDataManagerFake:
    return google_fake


@pytest.fixture
def list_id(fake: GoogleDataManagerFake) -> str:
    return fake.create_user_list("cio_buyers")


def ingest(fake: GoogleDataManagerFake, body: dict[str, Any]) -> httpx.Response:
    return call(fake, "POST", "/v1/audienceMembers:ingest", body)


def test_members_are_ingested_and_a_request_id_returned(
    fake: GoogleDataManagerFake, list_id: str
) -> None:
    response = ingest(fake, ingest_body(list_id, [member(sha("a@example.com"))]))
    assert response.status_code == 200
    assert response.json()["requestId"] in fake.request_ids
    assert fake.members("cio_buyers") == {sha("a@example.com")}


def test_a_call_without_a_bearer_token_is_401(fake: GoogleDataManagerFake, list_id: str) -> None:
    response = call(fake, "POST", "/v1/audienceMembers:ingest", ingest_body(list_id, []), None)
    assert response.status_code == 401
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"
    revoked = fake.issue_token()
    fake.revoke_tokens()
    assert ingest_as(fake, revoked, list_id).status_code == 401


def ingest_as(fake: GoogleDataManagerFake, token: str, list_id: str) -> httpx.Response:
    body = ingest_body(list_id, [member(sha("a@example.com"))])
    return call(fake, "POST", "/v1/audienceMembers:ingest", body, token)


def test_a_token_without_the_datamanager_scope_is_403(
    fake: GoogleDataManagerFake, list_id: str
) -> None:
    token = fake.issue_token(scope="https://www.googleapis.com/auth/adwords")
    response = ingest_as(fake, token, list_id)
    assert response.status_code == 403
    assert reason(response) == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"


def test_the_token_endpoint_grants_for_the_refresh_token_only(
    fake: GoogleDataManagerFake, list_id: str
) -> None:
    form = {
        "grant_type": "refresh_token",
        "refresh_token": fake.refresh_token,
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
    }
    granted = httpx.post(fake.token_url, data=form)
    assert granted.status_code == 200 and granted.json()["expires_in"] > 0
    assert ingest_as(fake, granted.json()["access_token"], list_id).status_code == 200
    refused = httpx.post(fake.token_url, data={**form, "refresh_token": "1//stolen"})
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize(
    ("change", "why", "field"),
    [
        ({"encoding": None}, "REQUIRED_FIELD_MISSING", "encoding"),
        ({"encoding": "RAW"}, "INVALID_ARGUMENT", "encoding"),
        ({"termsOfService": None}, "TERMS_AND_CONDITIONS_NOT_SIGNED", "terms_of_service"),
        ({"consent": {"adUserData": "YES"}}, "INVALID_ARGUMENT", "consent.adUserData"),
        ({"destinations": None}, "REQUIRED_FIELD_MISSING", "destinations"),
        ({"audienceMembers": []}, "REQUIRED_FIELD_MISSING", "audience_members"),
        ({"listId": "1"}, "INVALID_ARGUMENT", "listId"),
    ],
)
def test_request_shape_is_enforced(
    fake: GoogleDataManagerFake, list_id: str, change: dict[str, Any], why: str, field: str
) -> None:
    response = ingest(fake, ingest_body(list_id, [member(sha("a@example.com"))], **change))
    assert response.status_code == 400
    assert reason(response) == why
    assert violation(response) == field
    assert fake.request_ids == []


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ({"productDestinationId": "1"}, "REQUIRED_FIELD_MISSING"),
        (
            {"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": ACCOUNT}},
            "REQUIRED_FIELD_MISSING",
        ),
        (
            {
                "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "123-456-7890"},
                "productDestinationId": "1",
            },
            "INVALID_DESTINATION",
        ),
        (
            {
                "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": ACCOUNT},
                "productDestinationId": "404",
            },
            "INVALID_USER_LIST_ID",
        ),
    ],
)
def test_a_destination_needs_operating_account_and_product_destination_id(
    fake: GoogleDataManagerFake, list_id: str, entry: dict[str, Any], why: str
) -> None:
    body = ingest_body(list_id, [member(sha("a@example.com"))], destinations=[entry])
    response = ingest(fake, body)
    assert (response.status_code, reason(response)) == (400, why)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("a@example.com", "INVALID_HEX_ENCODING"),
        (sha("a@example.com")[:60], "INVALID_SHA256_FORMAT"),
        ("", "REQUIRED_FIELD_MISSING"),
    ],
)
def test_an_unhashed_email_fails_the_whole_request_naming_the_record(
    fake: GoogleDataManagerFake, list_id: str, value: str, why: str
) -> None:
    members = [member(sha(f"m{n}@example.com")) for n in range(5)]
    members[3] = member(value)
    response = ingest(fake, ingest_body(list_id, members))
    assert (response.status_code, reason(response)) == (400, why)
    assert violation(response).startswith("audience_members[3].user_data.user_identifiers[0]")
    assert "a@example.com" not in response.text
    assert fake.members("cio_buyers") == set()


def test_a_wrongly_normalised_known_email_or_phone_is_refused(
    fake: GoogleDataManagerFake, list_id: str
) -> None:
    fake.known_people([{"email": "Jo.Ann+shop@GMail.com", "phone": "(650) 555-1212"}])
    for wrong in ("jo.ann+shop@gmail.com", "jo.ann@gmail.com", "16505551212"):
        kind = "phoneNumber" if wrong[0].isdigit() else "emailAddress"
        body = ingest_body(list_id, [{"userData": {"userIdentifiers": [{kind: sha(wrong)}]}}])
        response = ingest(fake, body)
        assert (response.status_code, reason(response)) == (400, "INVALID_FORMAT_NOT_NORMALIZED")
    right = [{"emailAddress": sha("joann@gmail.com")}, {"phoneNumber": sha("+16505551212")}]
    body = ingest_body(list_id, [{"userData": {"userIdentifiers": right}}])
    assert ingest(fake, body).status_code == 200


def test_limits_of_members_and_identifiers(fake: GoogleDataManagerFake, list_id: str) -> None:
    many = [member(sha(f"{n}@example.com")) for n in range(10_001)]
    response = ingest(fake, ingest_body(list_id, many))
    assert (response.status_code, reason(response)) == (400, "TOO_MANY_AUDIENCE_MEMBERS")
    eleven = member(*(sha(f"{n}@example.com") for n in range(11)))
    response = ingest(fake, ingest_body(list_id, [eleven]))
    assert (response.status_code, reason(response)) == (400, "TOO_MANY_USER_IDENTIFIERS")
    assert ingest(fake, ingest_body(list_id, many[:10_000])).status_code == 200


def test_remove_takes_no_terms_or_consent_and_removes(
    fake: GoogleDataManagerFake, list_id: str
) -> None:
    ingest(fake, ingest_body(list_id, [member(sha("a@example.com")), member(sha("b@x.io"))]))
    refused = call(
        fake,
        "POST",
        "/v1/audienceMembers:remove",
        ingest_body(list_id, [member(sha("a@example.com"))]),
    )
    assert (refused.status_code, reason(refused)) == (400, "INVALID_ARGUMENT")
    body = ingest_body(list_id, [member(sha("a@example.com"))], termsOfService=None, consent=None)
    removed = call(fake, "POST", "/v1/audienceMembers:remove", body)
    assert removed.status_code == 200 and "requestId" in removed.json()
    assert fake.members("cio_buyers") == {sha("b@x.io")}


def test_validate_only_executes_nothing(fake: GoogleDataManagerFake, list_id: str) -> None:
    body = ingest_body(list_id, [member(sha("a@example.com"))], validateOnly=True)
    response = ingest(fake, body)
    assert response.status_code == 200
    assert fake.members("cio_buyers") == set()
    status = call(
        fake,
        "GET",
        "/v1/requestStatus:retrieve",
        params={"requestId": response.json()["requestId"]},
    )
    assert (status.status_code, reason(status)) == (400, "INVALID_REQUEST_ID")


def test_request_status_is_processing_then_success_with_a_match_rate(
    fake: GoogleDataManagerFake, list_id: str
) -> None:
    fake.now = fake.now
    rid = ingest(fake, ingest_body(list_id, [member(sha("a@example.com"))])).json()["requestId"]

    def status() -> dict[str, Any]:
        answer = call(fake, "GET", "/v1/requestStatus:retrieve", params={"requestId": rid})
        return dict(answer.json()["requestStatusPerDestination"][0])

    first = status()
    assert first["requestStatus"] == "PROCESSING"
    assert "errorInfo" not in first
    fake.now = fake.now + timedelta(minutes=31)
    done = status()
    assert done["requestStatus"] == "SUCCESS"
    ingestion = done["audienceMembersIngestionStatus"]["userDataIngestionStatus"]
    assert ingestion == {
        "recordCount": "1",
        "userIdentifierCount": "1",
        "uploadMatchRateRange": "MATCH_RATE_RANGE_41_TO_50",
    }
    fake.error_counts = {"PROCESSING_ERROR_REASON_INVALID_EMAIL": 2}
    partial = status()
    assert partial["requestStatus"] == "PARTIAL_SUCCESS"
    assert partial["errorInfo"]["errorCounts"] == [
        {"recordCount": "2", "reason": "PROCESSING_ERROR_REASON_INVALID_EMAIL"}
    ]


def test_over_300_requests_a_minute_is_429_resource_exhausted() -> None:
    with GoogleDataManagerFake(quota_per_minute=3).serving() as fake:
        list_id = fake.create_user_list("cio_buyers")
        answers = [
            ingest(fake, ingest_body(list_id, [member(sha("a@example.com"))])) for _ in range(4)
        ]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[3].json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert fake.throttled == 1


def test_user_lists_are_created_listed_and_names_are_unique(fake: GoogleDataManagerFake) -> None:
    path = f"/v1/accountTypes/GOOGLE_ADS/accounts/{ACCOUNT}/userLists"
    body = {
        "displayName": "cio_lapsed_75d",
        "membershipDuration": "7776000s",
        "ingestedUserListInfo": {"uploadKeyTypes": ["CONTACT_ID"]},
    }
    created = call(fake, "POST", path, body)
    assert created.status_code == 200
    assert created.json()["name"].endswith("/userLists/" + created.json()["id"])
    again = call(fake, "POST", path, body)
    assert (again.status_code, reason(again)) == (400, "DISPLAY_NAME_ALREADY_USED")
    odd = call(fake, "POST", path, {**body, "displayName": "x", "membershipDuration": "100s"})
    assert odd.status_code == 400
    for n in range(60):
        fake.create_user_list(f"other_{n}")
    first = call(fake, "GET", path).json()
    assert len(first["userLists"]) == 50 and "nextPageToken" in first
    rest = call(fake, "GET", path, params={"pageToken": first["nextPageToken"]}).json()
    assert len(rest["userLists"]) == 11 and "nextPageToken" not in rest


def event(n: int, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "transactionId": f"msg-{n}",
        "eventTimestamp": "2026-03-01T12:00:00Z",
        "eventSource": "WEB",
        "conversionValue": 10.5,
        "currency": "USD",
        "userData": {"userIdentifiers": [{"emailAddress": sha(f"{n}@example.com")}]},
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def events_body(*events: dict[str, Any]) -> dict[str, Any]:
    return {
        "destinations": [destination("700000001")],
        "encoding": "HEX",
        "events": list(events),
    }


def test_events_are_ingested_and_counted_once_per_transaction_id(
    fake: GoogleDataManagerFake,
) -> None:
    for _ in range(2):
        answer = call(fake, "POST", "/v1/events:ingest", events_body(event(1), event(2)))
        assert answer.status_code == 200
    assert len(fake.received_events) == 4
    assert [e["transactionId"] for e in fake.effective_events] == ["msg-1", "msg-2"]


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"userData": None}, "NO_IDENTIFIERS_PROVIDED"),
        ({"currency": "usd"}, "INVALID_CURRENCY_CODE"),
        ({"eventTimestamp": "yesterday"}, "EVENT_TIME_INVALID"),
        ({"eventTimestamp": "2999-01-01T00:00:00Z"}, "EVENT_TIME_INVALID"),
    ],
)
def test_one_bad_event_fails_the_whole_request(
    fake: GoogleDataManagerFake, over: dict[str, Any], why: str
) -> None:
    answer = call(fake, "POST", "/v1/events:ingest", events_body(event(1), event(2, **over)))
    assert (answer.status_code, reason(answer)) == (400, why)
    assert violation(answer).startswith("events[1]")
    assert fake.received_events == []


def test_a_click_id_alone_identifies_an_event(fake: GoogleDataManagerFake) -> None:
    body = events_body(event(1, userData=None, adIdentifiers={"gclid": "Cj0KCQ"}))
    body.pop("encoding")
    assert call(fake, "POST", "/v1/events:ingest", body).status_code == 200


def test_event_limits_and_conversion_action(fake: GoogleDataManagerFake) -> None:
    many = events_body(*(event(n) for n in range(2_001)))
    answer = call(fake, "POST", "/v1/events:ingest", many)
    assert (answer.status_code, reason(answer)) == (400, "TOO_MANY_EVENTS")
    unknown = events_body(event(1))
    unknown["destinations"] = [destination("1")]
    answer = call(fake, "POST", "/v1/events:ingest", unknown)
    assert (answer.status_code, reason(answer)) == (400, "INVALID_CONVERSION_ACTION_ID")


def test_injected_faults_use_google_error_bodies(fake: GoogleDataManagerFake, list_id: str) -> None:
    fake.fail(503)
    fake.fail(429, retry_after=5)
    body = ingest_body(list_id, [member(sha("a@example.com"))])
    down = ingest(fake, body)
    assert (down.status_code, down.json()["error"]["status"]) == (503, "UNAVAILABLE")
    throttled = ingest(fake, body)
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "5"
    assert reason(throttled) == "RATE_LIMIT_EXCEEDED"
    fake.timeout(delay=1.0)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            fake.base_url + "/v1/audienceMembers:ingest",
            json=body,
            headers={"Authorization": "Bearer " + fake.issue_token()},
            timeout=0.3,
        )
    assert SCOPE.endswith("/datamanager")


def test_one_kind_of_member_data_per_request(fake: GoogleDataManagerFake, list_id: str) -> None:
    composite = {"compositeData": {"userData": member(sha("b@example.com"))["userData"]}}
    response = ingest(fake, ingest_body(list_id, [member(sha("a@example.com")), composite]))
    assert (response.status_code, reason(response)) == (400, "MULTIPLE_DATA_TYPES_NOT_ALLOWED")
    assert ingest(fake, ingest_body(list_id, [composite])).status_code == 200


def test_destination_references_are_unique_and_at_most_ten(
    fake: GoogleDataManagerFake, list_id: str
) -> None:
    twice = [{**destination(list_id), "reference": "d1"}] * 2
    response = ingest(
        fake, ingest_body(list_id, [member(sha("a@example.com"))], destinations=twice)
    )
    assert (response.status_code, reason(response)) == (400, "DUPLICATE_DESTINATION_REFERENCE")
    many = [destination(list_id)] * 11
    response = ingest(fake, ingest_body(list_id, [member(sha("a@example.com"))], destinations=many))
    assert (response.status_code, reason(response)) == (400, "TOO_MANY_DESTINATIONS")


def test_base64_encoding_takes_44_characters_of_a_sha256(
    fake: GoogleDataManagerFake, list_id: str
) -> None:
    import base64

    digest = base64.b64encode(hashlib.sha256(b"a@example.com").digest()).decode()
    body = ingest_body(list_id, [member(digest)], encoding="BASE64")
    assert ingest(fake, body).status_code == 200
    assert fake.members("cio_buyers") == {sha("a@example.com")}
    short = ingest(fake, ingest_body(list_id, [member(digest[:40])], encoding="BASE64"))
    assert (short.status_code, reason(short)) == (400, "INVALID_SHA256_FORMAT")
    raw = ingest(fake, ingest_body(list_id, [member("a@example.com")], encoding="BASE64"))
    assert (raw.status_code, reason(raw)) == (400, "INVALID_BASE64_ENCODING")


def test_another_account_is_permission_denied(fake: GoogleDataManagerFake, list_id: str) -> None:
    other = destination(list_id)
    other["operatingAccount"] = {"accountType": "GOOGLE_ADS", "accountId": "5555555555"}
    body = ingest_body(list_id, [member(sha("a@example.com"))], destinations=[other])
    assert ingest(fake, body).status_code == 403
    path = "/v1/accountTypes/GOOGLE_ADS/accounts/5555555555/userLists"
    assert call(fake, "GET", path).status_code == 403


def test_remove_all_empties_the_list_and_takes_only_its_fields(
    fake: GoogleDataManagerFake, list_id: str
) -> None:
    other = fake.create_user_list("cio_other")
    ingest(fake, ingest_body(list_id, [member(sha("a@example.com")), member(sha("b@x.io"))]))
    ingest(fake, ingest_body(other, [member(sha("c@x.io"))]))
    extra = {"destinations": [destination(list_id)], "encoding": "HEX"}
    refused = call(fake, "POST", "/v1/audienceMembers:removeAll", extra)
    assert (refused.status_code, reason(refused)) == (400, "INVALID_ARGUMENT")
    checked = {"destinations": [destination(list_id)], "validateOnly": True}
    assert call(fake, "POST", "/v1/audienceMembers:removeAll", checked).status_code == 200
    assert fake.members("cio_buyers") == {sha("a@example.com"), sha("b@x.io")}
    body = {"destinations": [destination(list_id)]}
    removed = call(fake, "POST", "/v1/audienceMembers:removeAll", body)
    assert removed.status_code == 200 and "requestId" in removed.json()
    assert fake.members("cio_buyers") == set()
    assert fake.members("cio_other") == {sha("c@x.io")}


def test_remove_all_as_of_a_future_time_is_refused(
    fake: GoogleDataManagerFake, list_id: str
) -> None:
    ingest(fake, ingest_body(list_id, [member(sha("a@example.com"))]))
    later = (fake.now + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    body = {"destinations": [destination(list_id)], "removeAsOfTime": later}
    refused = call(fake, "POST", "/v1/audienceMembers:removeAll", body)
    assert (refused.status_code, reason(refused)) == (400, "INVALID_ARGUMENT")
    assert fake.members("cio_buyers") == {sha("a@example.com")}


def test_a_user_list_shows_its_size_per_network(fake: GoogleDataManagerFake, list_id: str) -> None:
    ingest(fake, ingest_body(list_id, [member(sha("a@example.com")), member(sha("b@x.io"))]))
    path = f"/v1/accountTypes/GOOGLE_ADS/accounts/{ACCOUNT}/userLists"
    shown = call(fake, "GET", f"{path}/{list_id}")
    assert shown.status_code == 200
    assert shown.json()["sizeInfo"] == {
        "displayNetworkMembersCount": "2",
        "searchNetworkMembersCount": "2",
    }
    listed = call(fake, "GET", path).json()["userLists"]
    assert listed[0]["sizeInfo"]["searchNetworkMembersCount"] == "2"
    missing = call(fake, "GET", f"{path}/1")
    assert (missing.status_code, reason(missing)) == (404, "NOT_FOUND")
