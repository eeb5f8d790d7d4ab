"""Meta Custom Audiences against the Graph API fake over real HTTP: audiences found or created by
exact name, ≤ 10,000 rows per request, removes as DELETE, identical bytes on resend, only hashes
on the wire, and Graph errors mapped to transient, auth and permanent failures."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cohortsync.destinations.base import AuthError as DestinationAuthError
from cohortsync.destinations.base import (
    Change,
    DestinationContext,
    Op,
    PermanentError,
    TransientError,
)
from cohortsync.destinations.hashing import sha256_hex
from cohortsync.destinations.meta_custom_audience import (
    HOLDOUT,
    MAX_ROWS,
    NO_IDENTIFIER,
    MetaCustomAudienceConfig,
    MetaCustomAudienceDestination,
)
from cohortsync.destinations.meta_graph import appsecret_proof
from tests.destinations.conformance import Conformance, Records, Subject, person
from tests.fakes.meta import MetaFake

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
AUDIENCE = "cio_cart_abandon_6h"
EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[a-z]{2,}", re.IGNORECASE)


def destination(
    fake: MetaFake, tmp_path: Path, http: httpx.Client, **overrides: Any
) -> MetaCustomAudienceDestination:
    """The destination pointed at the fake."""
    settings: dict[str, Any] = {
        "access_token": fake.token,
        "ad_account_id": f"act_{fake.ad_account_id}",
        "api_url": fake.url,
        **overrides,
    }
    config = MetaCustomAudienceConfig(**settings)
    fake.hashed_external_ids = config.hash_external_id  # the account's contract: one form
    context = DestinationContext(name="meta", project_dir=tmp_path, http=http, clock=lambda: NOW)
    return MetaCustomAudienceDestination(config, context)


def extern(n: int) -> str:
    """EXTERN_ID as sent for user `u-<n>`: its SHA-256."""
    return sha256_hex(f"u-{n}")


RECORDS = Records(start=NOW, step=timedelta(0))
change = RECORDS.change
batch = RECORDS.batch


def orjson_body(body: bytes) -> Any:
    """A request body parsed as JSON."""
    return orjson.loads(body)


def users_bodies(fake: MetaFake) -> list[bytes]:
    """The raw bodies of every `/users` request the fake received."""
    return [item.body for item in fake.log.to("/users")]


def test_audience_is_created_once_under_its_exact_name_and_reused(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """The first sync creates the audience; later syncs, even from a new process, reuse it."""
    meta_fake.create_audience(AUDIENCE + "_old")
    dest = destination(meta_fake, tmp_path, http)
    dest.apply(batch(change(1), batch_id="b-1"))
    dest.apply(batch(change(2), batch_id="b-2"))
    restarted = destination(meta_fake, tmp_path, http)
    restarted.apply(batch(change(3), batch_id="b-3"))

    assert meta_fake.audience_count(AUDIENCE) == 1
    assert len(meta_fake.log.to("/customaudiences", "POST")) == 1
    created = meta_fake.log.to("/customaudiences", "POST")[0].json()
    assert created["subtype"] == "CUSTOM"
    assert created["customer_file_source"] == "USER_PROVIDED_ONLY"
    assert meta_fake.members(AUDIENCE) == {
        sha256_hex(f"shopper.{n}@example.com") for n in (1, 2, 3)
    }
    assert meta_fake.members(AUDIENCE + "_old") == set()


def test_existing_audience_is_found_across_pages(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """An audience listed after a few hundred others is still found, not created twice."""
    for index in range(230):
        meta_fake.create_audience(f"other_{index}")
    existing = meta_fake.create_audience(AUDIENCE)

    destination(meta_fake, tmp_path, http).apply(batch(change(1)))

    assert meta_fake.audience_count(AUDIENCE) == 1
    assert meta_fake.audiences()[AUDIENCE] == existing
    assert len(meta_fake.log.to("/customaudiences", "GET")) == 3
    assert meta_fake.log.to("/customaudiences", "POST") == []


def test_25000_adds_go_as_three_requests_of_at_most_10000(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """Meta's 10,000-rows limit is kept; one session spans the batch, flagged on its last part."""
    changes = [change(n, ids={"email": f"shopper.{n}@example.com"}) for n in range(25_000)]
    result = destination(meta_fake, tmp_path, http).apply(batch(*changes))

    sessions = [orjson_body(body)["session"] for body in users_bodies(meta_fake)]
    sizes = [len(orjson_body(body)["payload"]["data"]) for body in users_bodies(meta_fake)]
    assert sizes == [10_000, 10_000, 5_000]
    assert len({s["session_id"] for s in sessions}) == 1
    assert [s["batch_seq"] for s in sessions] == [1, 2, 3]
    assert [s["last_batch_flag"] for s in sessions] == [False, False, True]
    assert len(meta_fake.members(AUDIENCE)) == 25_000
    assert result.rejected == {}
    assert result.stats["num_received"] == 25_000
    assert result.stats["requests"] == 3


def test_removes_use_delete_and_leave_the_others(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """A leaving profile is removed with `DELETE {id}/users`, carrying the same row."""
    dest = destination(meta_fake, tmp_path, http)
    dest.apply(batch(change(1), change(2), change(3), batch_id="b-1"))
    dest.apply(batch(change(2, "remove"), batch_id="b-2"))

    deletes = meta_fake.log.to("/users", "DELETE")
    assert len(deletes) == 1
    assert deletes[0].json()["payload"]["schema"] == ["EXTERN_ID", "EMAIL", "PHONE"]
    assert meta_fake.members(AUDIENCE, "EXTERN_ID") == {extern(1), extern(3)}


def test_mixed_batch_keeps_its_order(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """Remove then re-add of one profile in one batch leaves it a member: one request per run."""
    dest = destination(meta_fake, tmp_path, http)
    dest.apply(batch(change(1), change(2), batch_id="b-1"))
    result = dest.apply(
        batch(change(1, "remove"), change(2, "remove"), change(1, "add"), batch_id="b-2")
    )

    methods = [item.method for item in meta_fake.log.to("/users")]
    assert methods == ["POST", "DELETE", "POST"]
    assert meta_fake.members(AUDIENCE, "EXTERN_ID") == {extern(1)}
    assert result.stats["requests"] == 2


def test_resending_a_batch_sends_identical_bytes(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """A retried batch reuses its session id and batch_seq and sends the same body bytes."""
    sent = batch(*(change(n) for n in range(12_000)), change(5, "remove"), batch_id="b-retry")
    destination(meta_fake, tmp_path, http).apply(sent)
    first = users_bodies(meta_fake)
    destination(meta_fake, tmp_path, http).apply(sent)
    second = users_bodies(meta_fake)[len(first) :]

    assert len(first) == 3
    assert second == first
    assert meta_fake.duplicate_batches == 3


def test_no_raw_email_or_phone_leaves_the_process(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """Every request (URL, headers, body) carries hashes only; EXTERN_ID holding an email or a
    `+` phone is hashed too."""
    people = [person(n) for n in range(50)]
    changes = [change(n, ids=ids) for n, ids in enumerate(people)]
    changes.append(change(90, ids={"user_id": "vip@example.com"}))
    changes.append(change(91, ids={"user_id": "+16505550199"}))
    dest = destination(meta_fake, tmp_path, http)
    dest.apply(batch(*changes, batch_id="b-1"))
    dest.apply(
        batch(*(change(n, "remove", ids=ids) for n, ids in enumerate(people)), batch_id="b-2")
    )

    raw = [p["email"] for p in people] + [p["phone"] for p in people]
    raw += [p["phone"].lstrip("+") for p in people] + ["vip@example.com", "16505550199"]
    for item in meta_fake.log:
        text = item.text()
        assert not EMAIL_RE.search(text)
        assert not [value for value in raw if value in text]
    assert sha256_hex("vip@example.com") in meta_fake.members(AUDIENCE, "EXTERN_ID")
    assert sha256_hex("+16505550199") in meta_fake.members(AUDIENCE, "EXTERN_ID")


def test_phone_is_hashed_in_metas_form(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """An E.164 phone is hashed as digits with country code and no `+` (§9.1)."""
    destination(meta_fake, tmp_path, http).apply(batch(change(1, ids={"phone": "+16505551212"})))
    assert meta_fake.members(AUDIENCE, "PHONE") == {
        "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
    }


def test_records_without_identifier_are_rejected_locally(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """No usable identifier, or a holdout add, is rejected with its reason and never sent."""
    dest = destination(meta_fake, tmp_path, http)
    result = dest.apply(
        batch(
            change(1),
            change(2, ids={"anonymous_id": "anon-2"}),
            change(3, ids={"email": "not an email", "phone": " "}),
            change(4, holdout=True),
        )
    )

    assert result.rejected == {2: NO_IDENTIFIER, 3: NO_IDENTIFIER, 4: HOLDOUT}
    assert meta_fake.members(AUDIENCE, "EXTERN_ID") == {extern(1)}
    assert result.stats["sent"] == 1


def test_batch_with_nothing_to_send_makes_no_call(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """Only rejected records: no audience lookup, no upload."""
    result = destination(meta_fake, tmp_path, http).apply(batch(change(1, ids={})))
    assert result.rejected == {1: NO_IDENTIFIER}
    assert len(meta_fake.log) == 0


def test_dry_run_shows_the_requests_and_sends_nothing(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """The dry run renders the upload with the audience id as a placeholder, token redacted."""
    described = destination(meta_fake, tmp_path, http).dry_run(
        batch(change(1, ids={"email": "Mary@Example.com"}), change(2, "remove"))
    )

    assert len(meta_fake.log) == 0
    assert [d["method"] for d in described] == ["POST", "DELETE"]
    assert f"/v25.0/<id of {AUDIENCE}>/users?access_token=" in described[0]["url"]
    assert meta_fake.token not in str(described)
    assert described[0]["body"]["payload"]["data"] == [
        ["", "f1904cf1a9d73a55fa5de0ac823c4403ded71afd4c3248d00bdcd0866552bb79", ""]
    ]


def test_429_with_retry_after_is_transient(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """A 429 carries the platform's wait to the retry policy."""
    dest = destination(meta_fake, tmp_path, http)
    dest.apply(batch(change(1), batch_id="b-1"))
    meta_fake.fail(429, retry_after=30, path="/users")
    with pytest.raises(TransientError) as caught:
        dest.apply(batch(change(2), batch_id="b-2"))
    assert caught.value.retry_after == 30


def test_graph_throttle_code_is_transient_with_usage_wait(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """Code 17 on HTTP 400 is a throttle: wait `estimated_time_to_regain_access` minutes."""
    dest = destination(meta_fake, tmp_path, http)
    dest.apply(batch(change(1), batch_id="b-1"))
    meta_fake.throttle(17, times=1, regain_minutes=7, path="/users")
    with pytest.raises(TransientError, match="code 17") as caught:
        dest.apply(batch(change(2), batch_id="b-2"))
    assert caught.value.retry_after == 7 * 60


@pytest.mark.parametrize("code", [613, 80003])
def test_audience_rate_limits_are_transient(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client, code: int
) -> None:
    """Ad-account and business-use-case limits are retried, never dead-lettered."""
    dest = destination(meta_fake, tmp_path, http)
    dest.apply(batch(change(1), batch_id="b-1"))
    meta_fake.throttle(code, times=1, path="/users")
    with pytest.raises(TransientError):
        dest.apply(batch(change(2), batch_id="b-2"))


def test_an_edit_while_a_replace_session_runs_is_retried_later(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """Code 2650/1870145 (a replace in progress) ends with the session: never dead-lettered."""
    dest = destination(meta_fake, tmp_path, http)
    dest.apply(batch(change(1), batch_id="b-1"))
    audience_id = meta_fake.audiences()[AUDIENCE]
    payload = {"schema": ["EMAIL"], "data": [[sha256_hex("someone@example.com")]]}
    session = {"session_id": 7, "batch_seq": 1, "last_batch_flag": False}
    started = http.post(
        f"{meta_fake.graph_url}/{audience_id}/usersreplace",
        params={"access_token": meta_fake.token},
        data={"payload": orjson.dumps(payload).decode(), "session": orjson.dumps(session).decode()},
    )
    assert started.status_code == 200, started.text
    with pytest.raises(TransientError, match="1870145"):
        dest.apply(batch(change(2), batch_id="b-2"))


def test_server_error_and_timeout_are_transient(meta_fake: MetaFake, tmp_path: Path) -> None:
    """A 503 and an answer slower than the client's timeout can both be retried."""
    with httpx.Client(timeout=0.3) as quick:
        dest = destination(meta_fake, tmp_path, quick)
        dest.apply(batch(change(1), batch_id="b-1"))
        meta_fake.fail(503, path="/users")
        with pytest.raises(TransientError, match="HTTP 503"):
            dest.apply(batch(change(2), batch_id="b-2"))
        meta_fake.timeout(delay=2.0, path="/users")
        with pytest.raises(TransientError, match="no answer"):
            dest.apply(batch(change(2), batch_id="b-2"))


def test_invalid_token_is_an_auth_error(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """Code 190 pauses the destination instead of burning retries; the token never shows."""
    dest = destination(meta_fake, tmp_path, http, access_token="EAAwrong-token")
    with pytest.raises(DestinationAuthError, match="code 190") as caught:
        dest.apply(batch(change(1)))
    assert "EAAwrong-token" not in str(caught.value)


def test_invalid_parameter_is_permanent(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """Code 100 (an ad account this token cannot see) is not retried."""
    dest = destination(meta_fake, tmp_path, http, ad_account_id="999")
    with pytest.raises(PermanentError, match="code 100"):
        dest.apply(batch(change(1)))


def test_appsecret_proof_is_sent_and_matches_the_vector(tmp_path: Path, http: httpx.Client) -> None:
    """`appsecret_proof` = HMAC-SHA256(app secret, token) (§9.2), accepted by Graph."""
    assert appsecret_proof("app_secret_123", "EAAtesttoken") == (
        "7417ef5a9c03b4c8ab8b5538522b5ba836a3b96fb7a790a593b5b79cbd11a314"
    )
    with MetaFake(app_secret="app_secret_123").serving() as fake:
        destination(fake, tmp_path, http, app_secret="app_secret_123").apply(batch(change(1)))
        proofs = {dict(item.params).get("appsecret_proof") for item in fake.log}
        assert proofs == {appsecret_proof("app_secret_123", fake.token)}
        with pytest.raises(PermanentError, match="appsecret_proof"):
            destination(fake, tmp_path, http, app_secret="wrong").apply(batch(change(2)))


def test_extern_id_is_hashed_by_default(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """EXTERN_ID is the SHA-256 of the user id unless told otherwise, so a user id that is a
    national phone number (`6505551212`) never leaves raw; the fake, for an account whose ids
    are hashed, refuses anything else."""
    dest = destination(meta_fake, tmp_path, http)
    result = dest.apply(batch(change(1), change(2, ids={"user_id": "6505551212"})))

    assert result.rejected == {}
    assert meta_fake.members(AUDIENCE, "EXTERN_ID") == {extern(1), sha256_hex("6505551212")}
    assert not meta_fake.log.find("6505551212")


def test_opting_out_sends_opaque_user_ids_as_they_are(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """`hash_external_id: false` sends an id such as `u-1` unchanged, to match other uploads."""
    destination(meta_fake, tmp_path, http, hash_external_id=False).apply(batch(change(1)))
    assert meta_fake.members(AUDIENCE, "EXTERN_ID") == {"u-1"}


PII_USER_IDS = [
    ("6505551212", "phone number"),
    ("(650) 555-1212", "phone number"),
    ("650.555.1212", "phone number"),
    ("0044 7700 900123", "phone number"),
    ("+1 650 555 1212", "phone number"),
    ("tel:%2B16505551212", "phone number"),
    ("Ann.Lee+vip@Example.com", "email"),
    ("ann.lee%40example.com", "email"),
]


@pytest.mark.parametrize(("user_id", "kind"), PII_USER_IDS)
def test_opting_out_refuses_user_ids_that_look_like_an_email_or_phone(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client, user_id: str, kind: str
) -> None:
    """With `hash_external_id: false`, an add whose user id holds an email or a phone number in
    any form is refused, with a reason naming the kind (never the value) and the fix; the rest
    of the batch is sent, and the value is in no request."""
    dest = destination(meta_fake, tmp_path, http, hash_external_id=False)
    pii = change(2, ids={"user_id": user_id, "email": "ann.lee@example.com"})
    result = dest.apply(batch(change(1), pii))

    reason = result.rejected[2]
    assert reason.startswith(f"user_id looks like {'an' if kind == 'email' else 'a'} {kind}: ")
    assert "hash_external_id: false" in reason
    assert user_id not in reason
    assert list(result.rejected) == [2]
    assert meta_fake.members(AUDIENCE, "EXTERN_ID") == {"u-1"}
    assert not meta_fake.log.find(user_id)


def test_opting_out_still_removes_a_pii_like_user_id_hashed(
    meta_fake: MetaFake, tmp_path: Path, http: httpx.Client
) -> None:
    """An exit is never held back: a remove whose user id is a phone number goes out with the
    id hashed (and the email), never raw."""
    dest = destination(meta_fake, tmp_path, http, hash_external_id=False)
    ids = {"user_id": "6505551212", "email": "ann.lee@example.com"}
    result = dest.apply(batch(change(1), change(2, "remove", ids=ids)))

    assert result.rejected == {}
    (delete,) = meta_fake.log.to("/users", "DELETE")
    rows = delete.json()["payload"]["data"]
    assert rows == [[sha256_hex("6505551212"), sha256_hex("ann.lee@example.com"), ""]]
    assert not meta_fake.log.find("6505551212")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"ad_account_id": "acct-1"}, "ad_account_id must be the ad account number"),
        ({"api_url": "graph.facebook.com"}, "api_url must be an http"),
        ({"api_version": "25"}, "api_version must look like v25.0"),
        ({"access_token": " "}, "access_token is empty"),
        ({"customer_file_source": "BOTH"}, "customer_file_source"),
    ],
)
def test_config_errors_name_the_field_and_fix(value: dict[str, str], message: str) -> None:
    """A wrong setting says which and what it should look like, never echoing the token."""
    settings = {"access_token": "EAAsecret", "ad_account_id": "act_1", **value}
    with pytest.raises(ValidationError, match=message) as caught:
        MetaCustomAudienceConfig(**settings)
    assert "EAAsecret" not in str(caught.value)


def test_ad_account_prefix_is_optional() -> None:
    """`act_123` and `123` name the same account."""
    plain = MetaCustomAudienceConfig(access_token="t", ad_account_id="123")
    prefixed = MetaCustomAudienceConfig(access_token="t", ad_account_id="act_123")
    assert plain.account_path == prefixed.account_path == "act_123"


OPS = st.lists(
    st.tuples(st.sampled_from(["add", "remove"]), st.integers(min_value=1, max_value=12_000)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_no_request_exceeds_the_row_limit(runs: list[tuple[Op, int]]) -> None:
    """For any mix of adds and removes, every request holds 1..10,000 rows, every usable
    change is sent exactly once, and each request carries one op (reliability D-5)."""
    changes: list[Change] = []
    for op, count in runs:
        start = len(changes)
        changes += [change(start + i, op, ids={"user_id": f"u{start + i}"}) for i in range(count)]
    config = MetaCustomAudienceConfig(access_token="t", ad_account_id="1")
    with httpx.Client() as unused:
        context = DestinationContext(
            name="meta", project_dir=Path("."), http=unused, clock=lambda: NOW
        )
        uploads, rejected = MetaCustomAudienceDestination(config, context).plan(batch(*changes))
    assert rejected == {}
    assert all(1 <= len(u.rows) <= MAX_ROWS for u in uploads)
    assert sum(len(u.rows) for u in uploads) == len(changes)
    sent = [row[0] for u in uploads for row in u.rows]
    assert sent == [sha256_hex(c.identifiers["user_id"]) for c in changes]


# --- the destination conformance suite -------------------------------------------------------


class MetaCustomAudienceSubject(Subject):
    """The destination against the Graph fake; members are the hashed emails it holds."""

    def __init__(self, fake: MetaFake, http: httpx.Client, tmp_path: Path) -> None:
        self.fake = fake
        self.destination = destination(fake, tmp_path, http)

    def members(self, audience: str) -> set[str]:
        if audience not in self.fake.audiences():
            return set()
        return self.fake.members(audience)

    def key(self, record: Change) -> str:
        return sha256_hex(record.identifiers["email"])

    def state(self) -> object:
        """Members, and the uploads Meta counts once per (session, batch_seq, op)."""
        rows = {
            name: sorted(map(sorted, self.fake.member_rows(name))) for name in self.fake.audiences()
        }
        uploads = {(b.audience_id, b.op, b.session_id, b.batch_seq) for b in self.fake.batches}
        return rows, uploads

    def outgoing(self) -> str:
        return "\n".join(item.text() for item in self.fake.log)

    def fail(self, status: int, retry_after: float | None = None) -> None:
        self.fake.fail(status, retry_after=retry_after)

    def recover(self) -> None:
        self.fake.faults.clear()


class TestMetaCustomAudienceConformance(Conformance):
    @pytest.fixture
    def subject(
        self, meta_fake: MetaFake, http: httpx.Client, tmp_path: Path
    ) -> MetaCustomAudienceSubject:
        return MetaCustomAudienceSubject(meta_fake, http, tmp_path)
