"""Standard Webhooks v1 signatures: sign what cohortsync sends, verify it in your receiver.

cohortsync's `webhook` destination signs every request the Standard Webhooks way (HMAC-SHA256
over `"{webhook-id}.{webhook-timestamp}.{raw body}"`, secret `whsec_<base64 key>`), so any
Standard Webhooks library verifies it; this module is a dependency-free verifier too:

    from cohortsync.destinations.signing import WebhookVerificationError, verify

    try:
        verify(SECRET, request.headers, raw_body)   # the exact bytes received, not re-encoded JSON
    except WebhookVerificationError as exc:
        return 400, str(exc)
    # then deduplicate on request.headers["webhook-id"]: a retry reuses it

`generate_secret()` makes a new secret for the project file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
VERSION = "v1"
TOLERANCE = 300
"""Seconds a timestamp may be off the receiver's clock either way (reference libraries: 5 min)."""
MIN_KEY_BYTES = 24
"""The spec asks for 24 to 64 random bytes; shorter keys are refused."""
GENERATE_HINT = (
    "generate one with `python -c 'from cohortsync.destinations.signing import "
    "generate_secret; print(generate_secret())'`"
)


class WebhookVerificationError(ValueError):
    """A webhook that must not be trusted: the message says which check failed."""


class SecretError(ValueError):
    """A signing secret that is not `whsec_` followed by base64 of at least 24 bytes."""


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_…` secret; a `SecretError` saying how to fix a bad one."""
    if not secret.startswith(SECRET_PREFIX):
        raise SecretError(f"a webhook secret starts with {SECRET_PREFIX!r}: {GENERATE_HINT}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(
            f"the part after {SECRET_PREFIX!r} is not valid base64: {GENERATE_HINT}"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise SecretError(
            f"the webhook secret holds {len(key)} bytes, at least {MIN_KEY_BYTES} are needed: "
            f"{GENERATE_HINT}"
        )
    return key


def generate_secret(size: int = 32) -> str:
    """A fresh random secret, `whsec_` + base64 of `size` bytes (24..64)."""
    if not MIN_KEY_BYTES <= size <= 64:
        raise ValueError(f"size must be between {MIN_KEY_BYTES} and 64 bytes, got {size}")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(size)).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value `v1,<base64 HMAC-SHA256>` of one message."""
    return f"{VERSION},{_digest(secret_key(secret), msg_id, timestamp, body)}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: int | None = None,
    tolerance: int = TOLERANCE,
) -> None:
    """Return if `body` was signed with `secret` within `tolerance` seconds of `now`, else raise
    `WebhookVerificationError`. Header names are matched case-insensitively; any one of several
    space-separated `v1` signatures may match (secret rotation); other versions are ignored."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = _header(lowered, "webhook-id")
    raw_timestamp = _header(lowered, "webhook-timestamp")
    raw_signatures = _header(lowered, "webhook-signature")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise WebhookVerificationError(
            "webhook-timestamp is not an integer number of Unix seconds"
        ) from None
    now = int(time.time()) if now is None else now
    if timestamp < now - tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {now - timestamp} s old, more than the {tolerance} s allowed "
            "(a replay, or the sender's clock is wrong)"
        )
    if timestamp > now + tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {timestamp - now} s in the future, more than the {tolerance} s "
            "allowed (check both clocks)"
        )
    try:
        key = secret_key(secret)
    except SecretError as exc:
        raise WebhookVerificationError(f"cannot verify: {exc}") from None
    expected = _digest(key, msg_id, timestamp, body).encode("ascii")
    found = False
    for entry in raw_signatures.split(" "):
        version, _, signature = entry.partition(",")
        if version != VERSION:
            continue
        if hmac.compare_digest(expected, signature.encode("ascii", "replace")):
            found = True
    if not found:
        raise WebhookVerificationError(
            "no v1 signature matches: the body, webhook-id or webhook-timestamp was changed, the "
            "body was re-encoded before verifying, or the secret is not the one cohortsync uses"
        )


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None or not value.strip():
        raise WebhookVerificationError(f"the {name} header is missing")
    return value.strip()
