"""The Graph API fake keeps the contract of destinations.md §1 (Custom Audiences) and §2 (CAPI)."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.fakes.graph import appsecret_proof
from tests.fakes.meta import MetaFake

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
MARY = "f1904cf1a9d73a55fa5de0ac823c4403ded71afd4c3248d00bdcd0866552bb79"  # mary@example.com
JOHN = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"  # john_smith@gmail.com
PHONE = "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"  # 16505551212
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def sha(text: str) -> str:
    """Lowercase hex SHA-256, as a client sends it."""
    return hashlib.sha256(text.encode()).hexdigest()


def call(
    fake: MetaFake,
    method: str,
    path: str,
    *,
    token: str | None = "valid",
    params: dict[str, str] | None = None,
    data: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """One Graph request over HTTP; the valid token goes in the query string unless told."""
    query = dict(params or {})
    if token is not None:
        query["access_token"] = fake.token if token == "valid" else token
    return httpx.request(
        method,
        fake.graph_url + path,
        params=query,
        data=data,
        json=body,
        headers=headers,
        timeout=10,
    )


def create(fake: MetaFake, name: str) -> str:
    """Create a customer-file audience over HTTP; returns its id."""
    response = call(
        fake,
        "POST",
        f"/act_{fake.ad_account_id}/customaudiences",
        data={"name": name, "subtype": "CUSTOM", "customer_file_source": "USER_PROVIDED_ONLY"},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def upload(
    fake: MetaFake,
    audience_id: str,
    schema: Any,
    rows: list[Any],
    *,
    session: dict[str, Any] | None = None,
    method: str = "POST",
) -> httpx.Response:
    """Add (POST) or remove (DELETE) members, form-encoded with JSON-string params as the docs."""
    form = {"payload": json.dumps({"schema": schema, "data": rows})}
    if session is not None:
        form["session"] = json.dumps(session)
    if method == "DELETE":
        return call(fake, "DELETE", f"/{audience_id}/users", params=form)
    return call(fake, "POST", f"/{audience_id}/users", data=form)


def graph_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    """Assert the §1.7 envelope with this HTTP status and Graph code; return the error."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert isinstance(error["type"], str)
    assert isinstance(error["fbtrace_id"], str)
    return dict(error)


def event(**overrides: Any) -> dict[str, Any]:
    """A valid server event at the fake's clock."""
    base: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(NOW.timestamp()) - 60,
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "event_id": "order-1",
        "user_data": {"em": [MARY], "ph": PHONE, "client_user_agent": "Mozilla/5.0"},
        "custom_data": {"currency": "USD", "value": 42.5},
    }
    base.update(overrides)
    return base


def send_events(fake: MetaFake, events: list[Any], **extra: Any) -> httpx.Response:
    """POST /{pixel}/events with a JSON body."""
    return call(fake, "POST", f"/{fake.pixel_id}/events", body={"data": events, **extra})


@pytest.fixture
def meta(meta_fake: MetaFake) -> MetaFake:
    """The fake with its clock frozen at NOW."""
    meta_fake.now = NOW
    return meta_fake


# -- access token ---------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "EAAwrong"])
def test_a_missing_or_wrong_token_is_oauth_190(meta: MetaFake, token: str | None) -> None:
    response = call(meta, "GET", f"/act_{meta.ad_account_id}/customaudiences", token=token)
    assert graph_error(response, 401, 190)["type"] == "OAuthException"


@pytest.mark.parametrize("scheme", ["Bearer", "OAuth"])
def test_the_token_may_come_in_the_authorization_header(meta: MetaFake, scheme: str) -> None:
    response = call(
        meta,
        "GET",
        f"/act_{meta.ad_account_id}/customaudiences",
        token=None,
        headers={"Authorization": f"{scheme} {meta.token}"},
    )
    assert response.status_code == 200


def test_the_token_may_come_in_a_form_or_json_body(meta: MetaFake) -> None:
    fields = {"name": "a", "subtype": "CUSTOM", "customer_file_source": "USER_PROVIDED_ONLY"}
    path = f"/act_{meta.ad_account_id}/customaudiences"
    by_form = call(meta, "POST", path, token=None, data={**fields, "access_token": meta.token})
    by_json = call(meta, "POST", path, token=None, body={**fields, "access_token": meta.token})
    assert (by_form.status_code, by_json.status_code) == (200, 200)


def test_appsecret_proof_matches_the_published_vector() -> None:
    assert appsecret_proof("app_secret_123", "EAAtesttoken") == (
        "7417ef5a9c03b4c8ab8b5538522b5ba836a3b96fb7a790a593b5b79cbd11a314"
    )


def test_a_wrong_appsecret_proof_is_refused() -> None:
    with MetaFake(token="EAAtesttoken", app_secret="app_secret_123").serving() as fake:
        path = f"/act_{fake.ad_account_id}/customaudiences"
        good = appsecret_proof("app_secret_123", "EAAtesttoken")
        assert call(fake, "GET", path, params={"appsecret_proof": good}).status_code == 200
        wrong = call(fake, "GET", path, params={"appsecret_proof": "0" * 64})
        graph_error(wrong, 400, 100)


# -- audiences --------------------------------------------------------------------------------


def test_created_audiences_are_listed_and_readable(meta: MetaFake) -> None:
    audience_id = create(meta, "cio_cart_abandon_6h")
    assert audience_id.isdigit()
    listed = call(
        meta, "GET", f"/act_{meta.ad_account_id}/customaudiences", params={"fields": "id,name"}
    )
    assert listed.json()["data"] == [{"id": audience_id, "name": "cio_cart_abandon_6h"}]
    assert "paging" in listed.json()
    upload(meta, audience_id, "EMAIL_SHA256", [MARY, JOHN])
    fields = "name,approximate_count_lower_bound,approximate_count_upper_bound,operation_status"
    read = call(meta, "GET", f"/{audience_id}", params={"fields": fields}).json()
    assert read["name"] == "cio_cart_abandon_6h"
    assert read["approximate_count_lower_bound"] == 2
    assert read["operation_status"]["code"] == 200
    assert meta.audiences() == {"cio_cart_abandon_6h": audience_id}


SIZE_FIELDS = "approximate_count_lower_bound,approximate_count_upper_bound,operation_status"


def test_the_audience_get_answers_its_size_bounds_and_operation_status(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    empty = call(meta, "GET", f"/{audience_id}", params={"fields": SIZE_FIELDS}).json()
    assert empty == {
        "id": audience_id,
        "approximate_count_lower_bound": 0,
        "approximate_count_upper_bound": 0,
        "operation_status": {"code": 200, "description": "Normal"},
    }
    upload(meta, audience_id, ["EMAIL", "PHONE"], [[MARY, PHONE], [JOHN, ""]])
    upload(meta, audience_id, "EMAIL_SHA256", [sha("x@example.com")])
    upload(meta, audience_id, "EMAIL_SHA256", [JOHN], method="DELETE")
    read = call(meta, "GET", f"/{audience_id}", params={"fields": SIZE_FIELDS}).json()
    assert (read["approximate_count_lower_bound"], read["approximate_count_upper_bound"]) == (2, 2)
    assert read["operation_status"] == {"code": 200, "description": "Normal"}


def test_the_list_is_paged_with_cursors(meta: MetaFake) -> None:
    for n in range(30):
        meta.create_audience(f"aud_{n:02d}")
    first = call(meta, "GET", f"/act_{meta.ad_account_id}/customaudiences").json()
    assert len(first["data"]) == 25
    second = httpx.get(first["paging"]["next"], timeout=10).json()
    assert len(second["data"]) == 5
    assert "next" not in second["paging"]


@pytest.mark.parametrize(
    "fields",
    [
        {"subtype": "CUSTOM", "customer_file_source": "USER_PROVIDED_ONLY"},
        {"name": "a", "customer_file_source": "USER_PROVIDED_ONLY"},
        {"name": "a", "subtype": "LOOKALIKE", "customer_file_source": "USER_PROVIDED_ONLY"},
        {"name": "a", "subtype": "CUSTOM"},
        {"name": "a", "subtype": "CUSTOM", "customer_file_source": "SOMETIMES"},
    ],
)
def test_creating_without_the_required_fields_is_code_100(
    meta: MetaFake, fields: dict[str, str]
) -> None:
    response = call(meta, "POST", f"/act_{meta.ad_account_id}/customaudiences", data=fields)
    graph_error(response, 400, 100)
    assert meta.audiences() == {}


def test_another_ad_account_is_an_unknown_object(meta: MetaFake) -> None:
    response = call(meta, "GET", "/act_999/customaudiences")
    assert graph_error(response, 400, 100)["error_subcode"] == 33


def test_a_field_the_node_lacks_is_code_100(meta: MetaFake) -> None:
    audience_id = create(meta, "a")
    graph_error(
        call(meta, "GET", f"/{audience_id}", params={"fields": "approximate_count"}), 400, 100
    )


def test_another_api_version_is_refused(meta: MetaFake) -> None:
    response = httpx.get(
        f"{meta.url}/v19.0/act_{meta.ad_account_id}/customaudiences",
        params={"access_token": meta.token},
    )
    graph_error(response, 400, 2635)


# -- members ----------------------------------------------------------------------------------


def test_adding_returns_the_session_struct_and_changes_members(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    session = {"session_id": 9778993, "batch_seq": 1, "last_batch_flag": False}
    first = upload(
        meta, audience_id, ["EMAIL", "PHONE"], [[MARY, PHONE], [JOHN, ""]], session=session
    )
    assert first.json() == {
        "audience_id": audience_id,
        "session_id": "9778993",
        "num_received": 2,
        "num_invalid_entries": 0,
        "invalid_entry_samples": {},
    }
    second = upload(
        meta,
        audience_id,
        "EMAIL_SHA256",
        [[sha("x@example.com")]],
        session={
            "session_id": 9778993,
            "batch_seq": 2,
            "last_batch_flag": True,
        },
    )
    assert second.json()["num_received"] == 3
    assert meta.members("aud") == {MARY, JOHN, sha("x@example.com")}
    assert meta.members("aud", "PHONE") == {PHONE}
    assert {"EMAIL": MARY, "PHONE": PHONE} in meta.member_rows("aud")


@pytest.mark.parametrize("how", ["DELETE query string", "POST method=DELETE", "DELETE json body"])
def test_removal_takes_every_member_sharing_a_key(meta: MetaFake, how: str) -> None:
    audience_id = create(meta, "aud")
    upload(meta, audience_id, ["EMAIL", "PHONE"], [[MARY, PHONE], [JOHN, ""]])
    payload = {"schema": "PHONE_SHA256", "data": [PHONE]}
    if how == "DELETE query string":
        response = upload(meta, audience_id, "PHONE_SHA256", [PHONE], method="DELETE")
    elif how == "POST method=DELETE":
        form = {"payload": json.dumps(payload), "method": "DELETE"}
        response = call(meta, "POST", f"/{audience_id}/users", data=form)
    else:
        response = call(meta, "DELETE", f"/{audience_id}/users", body={"payload": payload})
    assert response.status_code == 200, response.text
    assert meta.members("aud") == {JOHN}
    assert [(b.op, b.rows) for b in meta.batches][-1] == ("remove", [{"PHONE": PHONE}])


def test_madid_and_extern_id_are_free_text(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    rows = [["user-123", "aece52e7-03ee-455a-b3c4-e57283966239", MARY]]
    response = upload(meta, audience_id, ["EXTERN_ID", "MADID", "EMAIL"], rows)
    assert response.status_code == 200, response.text
    assert meta.members("aud", "EXTERN_ID") == {"user-123"}


def test_an_account_with_hashed_ids_refuses_a_raw_extern_id(meta: MetaFake) -> None:
    """With `hashed_external_ids`, EXTERN_ID is checked like EMAIL: a raw id is code 100 and
    is never echoed; its SHA-256 is taken."""
    meta.hashed_external_ids = True
    audience_id = create(meta, "aud")
    raw = upload(meta, audience_id, ["EXTERN_ID", "EMAIL"], [["6505551212", MARY]])
    error = graph_error(raw, 400, 100)
    assert "field EXTERN_ID" in error["message"]
    assert "6505551212" not in raw.text
    hashed = upload(meta, audience_id, ["EXTERN_ID", "EMAIL"], [[sha("6505551212"), MARY]])
    assert hashed.status_code == 200, hashed.text
    assert meta.members("aud", "EXTERN_ID") == {sha("6505551212")}


def test_a_resent_batch_is_counted_apart_from_a_new_one(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    one = {"session_id": 7, "batch_seq": 1}
    upload(meta, audience_id, "EMAIL_SHA256", [MARY], session=one)
    upload(meta, audience_id, "EMAIL_SHA256", [MARY], session=one)
    upload(meta, audience_id, "EMAIL_SHA256", [JOHN], session={"session_id": 7, "batch_seq": 2})
    upload(meta, audience_id, "EMAIL_SHA256", [MARY], session=one, method="DELETE")
    assert meta.duplicate_batches == 1
    assert [(b.op, b.session_id, b.batch_seq) for b in meta.batches] == [
        ("add", 7, 1),
        ("add", 7, 1),
        ("add", 7, 2),
        ("remove", 7, 1),
    ]


def test_a_finished_session_takes_resends_but_no_new_batch(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    last = {"session_id": 8, "batch_seq": 1, "last_batch_flag": True}
    upload(meta, audience_id, "EMAIL_SHA256", [MARY], session=last)
    assert upload(meta, audience_id, "EMAIL_SHA256", [MARY], session=last).status_code == 200
    late = upload(
        meta, audience_id, "EMAIL_SHA256", [JOHN], session={"session_id": 8, "batch_seq": 2}
    )
    graph_error(late, 400, 100)
    assert meta.members("aud") == {MARY}


def test_the_sha256_of_an_empty_value_counts_as_invalid(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    response = upload(meta, audience_id, ["EMAIL", "PHONE"], [[MARY, PHONE], [EMPTY, ""], ["", ""]])
    body = response.json()
    assert body["num_received"] == 3
    assert body["num_invalid_entries"] == 2
    assert len(body["invalid_entry_samples"]) == 2
    assert meta.members("aud") == {MARY}


@pytest.mark.parametrize(
    ("schema", "rows"),
    [
        ("EMAIL_SHA256X", [MARY]),
        (["EMAIL", "FAVOURITE_COLOUR"], [[MARY, ""]]),
        ([], []),
        (["EMAIL", "PHONE"], [[MARY]]),
        (["EMAIL", "PHONE"], [[MARY, PHONE, ""]]),
        ("EMAIL_SHA256", []),
        ("EMAIL_SHA256", [MARY.upper()]),
        ("EMAIL_SHA256", [MARY[:63]]),
        ("EMAIL_SHA256", [12345]),
        (["EMAIL", "PHONE"], [[MARY, "+16505551212"]]),
    ],
    ids=[
        "unknown schema",
        "unknown field",
        "empty schema",
        "row too narrow",
        "row too wide",
        "no data",
        "upper-case hex",
        "short hash",
        "number",
        "raw phone",
    ],
)
def test_a_malformed_payload_is_code_100_and_changes_nothing(
    meta: MetaFake, schema: Any, rows: list[Any]
) -> None:
    audience_id = create(meta, "aud")
    graph_error(upload(meta, audience_id, schema, rows), 400, 100)
    assert meta.members("aud") == set()
    assert meta.batches == []


def test_a_raw_email_is_refused_without_echoing_it(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    response = upload(meta, audience_id, ["EMAIL"], [[MARY], ["mary.raw@example.com"]])
    error = graph_error(response, 400, 100)
    assert "row 1" in error["message"]
    assert "mary.raw@example.com" not in response.text
    assert meta.members("aud") == set()
    assert [item.status for item in meta.log.find("mary.raw@example.com")] == [400]


def test_more_than_ten_thousand_rows_is_code_100(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    rows = [sha(f"user{n}@example.com") for n in range(10_001)]
    graph_error(upload(meta, audience_id, "EMAIL_SHA256", rows), 400, 100)
    assert upload(meta, audience_id, "EMAIL_SHA256", rows[:10_000]).status_code == 200
    assert len(meta.members("aud")) == 10_000


def test_an_unknown_audience_is_code_100(meta: MetaFake) -> None:
    response = upload(meta, "23850000000000001", "EMAIL_SHA256", [MARY])
    assert graph_error(response, 400, 100)["error_subcode"] == 33


def test_payload_may_be_a_json_object_in_a_json_body(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    body = {
        "payload": {"schema": "EMAIL_SHA256", "data": [[MARY]]},
        "session": {"session_id": 1, "batch_seq": 1},
    }
    assert call(meta, "POST", f"/{audience_id}/users", body=body).status_code == 200
    assert meta.members("aud") == {MARY}


KNOWN = {"email": " Mary@Example.com ", "phone": "+1 (650) 555-1212", "fn": "Mary", "ln": "O'Brien"}


@pytest.mark.parametrize(
    ("column", "form"),
    [
        ("EMAIL", " Mary@Example.com "),
        ("EMAIL", "Mary@Example.com"),
        ("EMAIL", " mary@example.com "),
        ("PHONE", "+16505551212"),
        ("PHONE", "6505551212"),
        ("PHONE", "+1 (650) 555-1212"),
        ("PHONE", "0016505551212"),
        ("LN", "o'brien"),
        ("FN", "Mary"),
    ],
)
def test_hashes_of_badly_normalised_known_people_are_refused(
    meta: MetaFake, column: str, form: str
) -> None:
    meta.known_people([KNOWN])
    audience_id = create(meta, "aud")
    graph_error(upload(meta, audience_id, [column], [[sha(form)]]), 400, 100)


def test_twice_hashed_values_of_known_people_are_refused(meta: MetaFake) -> None:
    meta.known_people([KNOWN])
    audience_id = create(meta, "aud")
    graph_error(upload(meta, audience_id, ["EMAIL"], [[sha(MARY)]]), 400, 100)


def test_right_hashes_of_known_people_are_accepted(meta: MetaFake) -> None:
    meta.known_people([KNOWN, {"email": "john_smith@gmail.com"}])
    audience_id = create(meta, "aud")
    rows = [[MARY, PHONE, sha("mary"), sha("obrien")], [JOHN, "", "", ""]]
    response = upload(meta, audience_id, ["EMAIL", "PHONE", "FN", "LN"], rows)
    assert response.status_code == 200, response.text
    assert {person.get("email") for person in meta.people_in("aud")} == {
        KNOWN["email"],
        "john_smith@gmail.com",
    }


def test_seeded_and_dropped_members_model_drift(meta: MetaFake) -> None:
    meta.create_audience("aud")
    meta.seed_members("aud", [{"EMAIL": MARY}, {"EMAIL": JOHN}])
    meta.drop_members("aud", [{"EMAIL": JOHN}])
    assert meta.members("aud") == {MARY}


# -- full replace -----------------------------------------------------------------------------


def replace(
    fake: MetaFake,
    audience_id: str,
    rows: list[str],
    seq: int,
    *,
    last: bool = False,
    sid: int = 42,
) -> httpx.Response:
    """One /usersreplace batch of EMAIL hashes."""
    form = {
        "payload": json.dumps({"schema": ["EMAIL"], "data": [[row] for row in rows]}),
        "session": json.dumps({"session_id": sid, "batch_seq": seq, "last_batch_flag": last}),
    }
    return call(fake, "POST", f"/{audience_id}/usersreplace", data=form)


def test_a_replace_session_swaps_the_members_when_it_ends(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    upload(meta, audience_id, "EMAIL_SHA256", [MARY, JOHN])
    first = replace(meta, audience_id, [sha("a@example.com")], 1)
    assert first.json() == {
        "account_id": meta.ad_account_id,
        "session_id": "42",
        "num_received": 1,
        "num_invalid_entries": 0,
        "invalid_entry_samples": [],
    }
    assert meta.members("aud") == {MARY, JOHN}
    status = call(meta, "GET", f"/{audience_id}", params={"fields": "operation_status"}).json()
    assert status["operation_status"]["description"] == "replace_in_progress"
    busy = upload(meta, audience_id, "EMAIL_SHA256", [MARY])
    assert graph_error(busy, 400, 2650)["error_subcode"] == 1870145
    replace(meta, audience_id, [MARY], 2)
    last = replace(meta, audience_id, [MARY], 2, last=True)
    assert last.json()["num_received"] == 3
    assert meta.members("aud") == {sha("a@example.com"), MARY}
    assert meta.duplicate_batches == 1


@pytest.mark.parametrize(
    ("steps", "subcode"),
    [
        ([(2, False)], 1870147),
        ([(1, False), (1, False)], 1870148),
        ([(1, True), (2, False)], 1870159),
    ],
    ids=["no first batch", "first batch resent", "after the last batch"],
)
def test_replace_session_errors_use_code_2650(
    meta: MetaFake, steps: list[tuple[int, bool]], subcode: int
) -> None:
    audience_id = create(meta, "aud")
    *before, (seq, last) = steps
    for earlier_seq, earlier_last in before:
        assert replace(meta, audience_id, [MARY], earlier_seq, last=earlier_last).status_code == 200
    response = replace(meta, audience_id, [JOHN], seq, last=last)
    assert graph_error(response, 400, 2650)["error_subcode"] == subcode


def test_a_replace_session_ends_by_itself_after_90_minutes(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    upload(meta, audience_id, "EMAIL_SHA256", [JOHN])
    replace(meta, audience_id, [MARY], 1)
    meta.now = NOW + timedelta(minutes=91)
    late = replace(meta, audience_id, [sha("b@example.com")], 2)
    assert graph_error(late, 400, 2650)["error_subcode"] == 1870158
    assert meta.members("aud") == {MARY}
    assert upload(meta, audience_id, "EMAIL_SHA256", [JOHN]).status_code == 200


def test_a_replace_session_keeps_one_schema(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    replace(meta, audience_id, [MARY], 1)
    form = {
        "payload": json.dumps({"schema": ["PHONE"], "data": [[PHONE]]}),
        "session": json.dumps({"session_id": 42, "batch_seq": 2}),
    }
    response = call(meta, "POST", f"/{audience_id}/usersreplace", data=form)
    graph_error(response, 400, 2650)


# -- conversions ------------------------------------------------------------------------------


def test_a_valid_event_is_received(meta: MetaFake) -> None:
    response = send_events(meta, [event()], test_event_code="TEST123")
    assert response.status_code == 200
    body = response.json()
    assert body["events_received"] == 1
    assert body["messages"] == []
    assert isinstance(body["fbtrace_id"], str)
    assert len(meta.received_events) == len(meta.effective_events) == 1


def test_events_may_be_json_strings_in_a_form_as_the_sdk_sends_them(meta: MetaFake) -> None:
    data = json.dumps([json.dumps(event()), json.dumps(event(event_id="order-2"))])
    response = call(meta, "POST", f"/{meta.pixel_id}/events", data={"data": data})
    assert response.json()["events_received"] == 2
    assert [e["event_id"] for e in meta.received_events] == ["order-1", "order-2"]


def test_the_same_name_and_id_within_48_hours_counts_once(meta: MetaFake) -> None:
    send_events(meta, [event(), event()])
    send_events(meta, [event(event_name="AddToCart")])
    meta.now = NOW + timedelta(hours=47)
    send_events(meta, [event(event_time=int(meta.now.timestamp()))])
    assert (len(meta.received_events), len(meta.effective_events)) == (4, 2)
    meta.now = NOW + timedelta(hours=49)
    send_events(meta, [event(event_time=int(meta.now.timestamp()))])
    assert (len(meta.received_events), len(meta.effective_events)) == (5, 3)


def test_one_event_older_than_seven_days_refuses_the_whole_request(meta: MetaFake) -> None:
    stale = int((NOW - timedelta(days=7, seconds=1)).timestamp())
    response = send_events(meta, [event(), event(event_id="old", event_time=stale)])
    assert "data[1].event_time" in graph_error(response, 400, 100)["message"]
    assert meta.received_events == []
    store = event(
        action_source="physical_store", event_time=int((NOW - timedelta(days=30)).timestamp())
    )
    assert send_events(meta, [store]).status_code == 200


def test_more_than_a_thousand_events_is_refused(meta: MetaFake) -> None:
    events = [event(event_id=f"o{n}") for n in range(1_001)]
    graph_error(send_events(meta, events), 400, 100)
    assert send_events(meta, events[:1_000]).json()["events_received"] == 1_000


def _without(key: str) -> dict[str, Any]:
    whole = event()
    del whole[key]
    return whole


@pytest.mark.parametrize(
    "bad",
    [
        _without("event_name"),
        _without("event_time"),
        _without("action_source"),
        _without("user_data"),
        _without("event_source_url"),
        event(user_data={"em": MARY}),
        event(user_data={}),
        event(action_source="billboard"),
        event(event_time="yesterday"),
        event(user_data={"em": "mary@example.com", "client_user_agent": "UA"}),
        event(user_data={"em": [MARY, "Mary@Example.com"], "client_user_agent": "UA"}),
        event(user_data={"ph": "16505551212", "client_user_agent": "UA"}),
        event(user_data={"fn": "mary", "client_user_agent": "UA"}),
        event(user_data={"em": EMPTY, "client_user_agent": "UA"}),
        event(
            user_data={"em": MARY, "client_user_agent": "UA", "client_ip_address": sha("1.2.3.4")}
        ),
        event(user_data={"em": MARY, "client_user_agent": sha("Mozilla/5.0")}),
        event(user_data={"em": MARY, "client_user_agent": "UA", "fbp": "not-a-cookie"}),
    ],
    ids=[
        "no event_name",
        "no event_time",
        "no action_source",
        "no user_data",
        "website without url",
        "website without user agent",
        "empty user_data",
        "unknown action_source",
        "event_time not seconds",
        "raw email",
        "raw email in a list",
        "raw phone",
        "raw first name",
        "hash of empty",
        "hashed ip",
        "hashed user agent",
        "malformed fbp",
    ],
)
def test_an_invalid_event_refuses_the_whole_request(meta: MetaFake, bad: dict[str, Any]) -> None:
    response = send_events(meta, [event(event_id="good"), bad])
    assert "data[1]" in graph_error(response, 400, 100)["message"]
    assert "mary@example.com" not in response.text.lower()
    assert meta.received_events == []


def test_unhashed_fields_and_external_id_pass_as_is(meta: MetaFake) -> None:
    user_data = {
        "client_ip_address": "203.0.113.7",
        "client_user_agent": "Mozilla/5.0",
        "fbc": "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890",
        "fbp": "fb.1.1558571054389.1098115397",
        "external_id": "user-123",
    }
    assert send_events(meta, [event(user_data=user_data)]).status_code == 200


def test_an_account_with_hashed_ids_refuses_a_raw_external_id(meta: MetaFake) -> None:
    """With `hashed_external_ids`, a raw `external_id` refuses the request; a hash passes."""
    meta.hashed_external_ids = True
    raw = event(user_data={"external_id": ["user-123"], "client_user_agent": "UA"})
    assert "external_id" in graph_error(send_events(meta, [raw]), 400, 100)["message"]
    hashed = event(user_data={"external_id": [sha("user-123")], "client_user_agent": "UA"})
    assert send_events(meta, [hashed]).status_code == 200


def test_known_people_are_checked_in_conversions_too(meta: MetaFake) -> None:
    meta.known_people([KNOWN])
    bad = event(user_data={"ph": sha("6505551212"), "client_user_agent": "UA"})
    graph_error(send_events(meta, [bad]), 400, 100)


def test_an_unknown_pixel_is_code_100(meta: MetaFake) -> None:
    response = call(meta, "POST", "/111/events", body={"data": [event()]})
    assert graph_error(response, 400, 100)["error_subcode"] == 33


# -- faults -----------------------------------------------------------------------------------


def test_failures_fire_the_scripted_number_of_times_before_validation(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    meta.fail(500, times=2)
    first = upload(meta, audience_id, "EMAIL_SHA256", ["not a hash"])
    assert graph_error(first, 500, 2)["is_transient"] is True
    assert call(meta, "GET", "/x", token="EAAwrong").status_code == 500
    assert upload(meta, audience_id, "EMAIL_SHA256", [MARY]).status_code == 200
    assert meta.members("aud") == {MARY}
    assert meta.faults.fired == 2


def test_a_scripted_429_carries_retry_after(meta: MetaFake) -> None:
    meta.fail(429, times=1, retry_after=30)
    response = send_events(meta, [event()])
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert meta.received_events == []
    assert send_events(meta, [event()]).status_code == 200


@pytest.mark.parametrize("code", [17, 613, 80003])
def test_graph_throttling_uses_codes_and_the_usage_header(meta: MetaFake, code: int) -> None:
    meta.throttle(code, times=1, regain_minutes=3)
    response = call(meta, "GET", f"/act_{meta.ad_account_id}/customaudiences")
    graph_error(response, 400, code)
    usage = json.loads(response.headers["x-business-use-case-usage"])
    [(business, [entry])] = usage.items()
    assert business == meta.business_id
    assert entry["estimated_time_to_regain_access"] == 3
    assert call(meta, "GET", f"/act_{meta.ad_account_id}/customaudiences").status_code == 200


def test_a_status_script_is_consumed_one_per_attempt(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    meta.script([500, 200, 429, 400], retry_after=1)
    statuses = [upload(meta, audience_id, "EMAIL_SHA256", [MARY]).status_code for _ in range(5)]
    assert statuses == [500, 200, 429, 400, 200]
    assert len(meta.batches) == 2
    assert not meta.faults.pending


def test_faults_can_target_one_path(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    meta.fail(503, seconds=600, path="/users")
    assert upload(meta, audience_id, "EMAIL_SHA256", [MARY]).status_code == 503
    assert call(meta, "GET", f"/{audience_id}").status_code == 200
    meta.faults.clear()
    assert upload(meta, audience_id, "EMAIL_SHA256", [MARY]).status_code == 200


def test_a_timed_failure_window_ends(meta: MetaFake) -> None:
    meta.fail(503, seconds=2.0)  # long enough for the first call on a loaded machine
    assert call(meta, "GET", f"/act_{meta.ad_account_id}/customaudiences").status_code == 503
    while meta.faults.pending:
        time.sleep(0.01)
    assert call(meta, "GET", f"/act_{meta.ad_account_id}/customaudiences").status_code == 200


def test_a_timeout_drops_the_request_and_fires_once(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    meta.timeout(times=1, delay=30)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{meta.graph_url}/{audience_id}/users",
            params={"access_token": meta.token},
            data={"payload": json.dumps({"schema": "EMAIL_SHA256", "data": [MARY]})},
            timeout=0.3,
        )
    assert meta.members("aud") == set()
    assert upload(meta, audience_id, "EMAIL_SHA256", [MARY]).status_code == 200
    assert meta.members("aud") == {MARY}


def test_a_processed_timeout_changes_state_but_loses_the_answer(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    meta.timeout(times=1, delay=30, processed=True)
    session = json.dumps({"session_id": 5, "batch_seq": 1})
    form = {"payload": json.dumps({"schema": "EMAIL_SHA256", "data": [MARY]}), "session": session}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{meta.graph_url}/{audience_id}/users",
            params={"access_token": meta.token},
            data=form,
            timeout=0.3,
        )
    assert meta.members("aud") == {MARY}
    assert call(meta, "POST", f"/{audience_id}/users", data=form).status_code == 200
    assert meta.duplicate_batches == 1


def test_the_capture_log_keeps_every_request(meta: MetaFake) -> None:
    audience_id = create(meta, "aud")
    upload(meta, audience_id, "EMAIL_SHA256", [MARY], method="DELETE")
    send_events(meta, [event()])
    log = list(meta.log)
    assert [(item.method, item.status) for item in log] == [
        ("POST", 200),
        ("DELETE", 200),
        ("POST", 200),
    ]
    assert ("access_token", meta.token) in log[1].params
    assert MARY in log[1].text()
    assert log[2].json()["data"][0]["event_id"] == "order-1"
    assert meta.log.find("@example.com") == []
