"""Standard Webhooks v1 signatures: the spec's vectors, and every check a receiver relies on."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from cohortsync.destinations.signing import (
    SecretError,
    WebhookVerificationError,
    generate_secret,
    secret_key,
    sign,
    verify,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

VECTORS = [
    (
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ),
    (
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        1674087231,
        b'{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z",'
        b'"data":{"id":"1f81eb52-5198-4599-803e-771906343485"}}',
        "v1,ARw42xaAApl/nxRo+iPGYwSaMQaOwMo2eyH5JBRA+bQ=",
    ),
    (
        "evt_0001",
        1700000000,
        b'{"type":"audience.member.added","data":{"audience_id":"aud_1","user_id":"u1"}}',
        "v1,BL39qTyYINIrx0+FlADOBXpygSlhIdo0YKINWZc11zQ=",
    ),
]


def headers(msg_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


@pytest.mark.parametrize(("msg_id", "timestamp", "body", "expected"), VECTORS)
def test_sign_reproduces_the_published_vectors(
    msg_id: str, timestamp: int, body: bytes, expected: str
) -> None:
    assert sign(SECRET, msg_id, timestamp, body) == expected


@pytest.mark.parametrize(("msg_id", "timestamp", "body", "expected"), VECTORS)
def test_verify_accepts_the_published_vectors(
    msg_id: str, timestamp: int, body: bytes, expected: str
) -> None:
    verify(SECRET, headers(msg_id, timestamp, expected), body, now=timestamp)


MSG_ID, TS, BODY, SIGNATURE = VECTORS[0]


@pytest.mark.parametrize(
    ("msg_id", "timestamp", "body"),
    [
        (MSG_ID, TS, b'{"test": 2432232315}'),
        (MSG_ID, TS, b'{"test":2432232314}'),  # re-encoded JSON is not the signed bytes
        ("msg_other", TS, BODY),
        (MSG_ID, TS + 1, BODY),
    ],
    ids=["body", "reencoded-body", "id", "timestamp"],
)
def test_tampered_message_is_rejected(msg_id: str, timestamp: int, body: bytes) -> None:
    with pytest.raises(WebhookVerificationError, match="no v1 signature matches"):
        verify(SECRET, headers(msg_id, timestamp, SIGNATURE), body, now=TS)


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(WebhookVerificationError, match="no v1 signature matches"):
        verify(generate_secret(), headers(MSG_ID, TS, SIGNATURE), BODY, now=TS)


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamp_within_tolerance_either_way_is_accepted(offset: int) -> None:
    verify(SECRET, headers(MSG_ID, TS, SIGNATURE), BODY, now=TS + offset)


def test_stale_timestamp_is_rejected() -> None:
    with pytest.raises(WebhookVerificationError, match="301 s old"):
        verify(SECRET, headers(MSG_ID, TS, SIGNATURE), BODY, now=TS + 301)


def test_future_timestamp_is_rejected() -> None:
    with pytest.raises(WebhookVerificationError, match="301 s in the future"):
        verify(SECRET, headers(MSG_ID, TS, SIGNATURE), BODY, now=TS - 301)


def test_tolerance_is_configurable() -> None:
    verify(SECRET, headers(MSG_ID, TS, SIGNATURE), BODY, now=TS + 3_000, tolerance=3_600)
    with pytest.raises(WebhookVerificationError, match="old"):
        verify(SECRET, headers(MSG_ID, TS, SIGNATURE), BODY, now=TS + 11, tolerance=10)


def test_header_names_are_case_insensitive() -> None:
    mixed = {"Webhook-Id": MSG_ID, "WEBHOOK-TIMESTAMP": str(TS), "Webhook-Signature": SIGNATURE}
    verify(SECRET, mixed, BODY, now=TS)


def test_any_of_several_signatures_may_match_and_other_versions_are_ignored() -> None:
    rotated = f"v1,{base64.b64encode(b'x' * 32).decode()} v1a,{SIGNATURE[3:]} {SIGNATURE}"
    verify(SECRET, headers(MSG_ID, TS, rotated), BODY, now=TS)


def test_a_matching_signature_under_another_version_is_not_accepted() -> None:
    with pytest.raises(WebhookVerificationError, match="no v1 signature matches"):
        verify(SECRET, headers(MSG_ID, TS, "v2," + SIGNATURE[3:]), BODY, now=TS)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_named(missing: str) -> None:
    sent = headers(MSG_ID, TS, SIGNATURE)
    del sent[missing]
    with pytest.raises(WebhookVerificationError, match=f"the {missing} header is missing"):
        verify(SECRET, sent, BODY, now=TS)


def test_non_numeric_timestamp_is_rejected() -> None:
    with pytest.raises(WebhookVerificationError, match="not an integer"):
        verify(SECRET, {**headers(MSG_ID, TS, SIGNATURE), "webhook-timestamp": "soon"}, BODY)


def test_generated_secret_signs_what_an_independent_hmac_computes() -> None:
    secret = generate_secret()
    key = base64.b64decode(secret.removeprefix("whsec_"))
    assert len(key) == 32
    expected = hmac.new(key, b"evt_1.1700000000.{}", hashlib.sha256).digest()
    assert sign(secret, "evt_1", 1700000000, b"{}") == "v1," + base64.b64encode(expected).decode()
    assert generate_secret() != secret


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with 'whsec_'"),
        ("whsec_not base64!", "not valid base64"),
        ("whsec_c2hvcnQ=", "holds 5 bytes"),
    ],
)
def test_bad_secret_says_what_is_wrong_and_how_to_generate_one(secret: str, problem: str) -> None:
    with pytest.raises(SecretError, match=problem) as caught:
        secret_key(secret)
    assert "generate_secret()" in str(caught.value)
