"""Sending the test cohort to a running `cohortsync serve`, as a shop's server would.

Messages go to `POST /v1/batch` with the project's first source's write key (HTTP Basic, the
key as user name); a refusal, or a message the server quarantined, stops the validation with
the server's reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import httpx

from cohortsync.config.models import Project
from cohortsync.errors import InputError

BATCH = 500
"""Messages per request (Segment's limit is 2,500 and 500 KB)."""


def http_sender(url: str, project: Project) -> Callable[[Iterable[dict[str, Any]]], None]:
    """A function that sends messages to the serve at `url` and returns once each is stored."""
    if not project.sources:
        raise InputError(
            "--url needs a source with a write_key in cohortsync.yml (sources: {web: …})"
        )
    key = next(iter(project.sources.values())).write_key
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise InputError(f"--url {url!r} is not an HTTP address — e.g. http://127.0.0.1:8000")

    def send(messages: Iterable[dict[str, Any]]) -> None:
        batch = list(messages)
        with httpx.Client(timeout=30) as client:
            for start in range(0, len(batch), BATCH):
                _post(client, base, key, batch[start : start + BATCH])

    return send


def _post(client: httpx.Client, base: str, key: str, batch: Sequence[dict[str, Any]]) -> None:
    try:
        answer = client.post(f"{base}/v1/batch", json={"batch": list(batch)}, auth=(key, ""))
    except httpx.HTTPError as exc:
        raise InputError(
            f"cannot reach {base}/v1/batch ({type(exc).__name__}) — is `cohortsync serve` "
            "running there?"
        ) from None
    if answer.status_code != 200:
        raise InputError(
            f"{base}/v1/batch answered {answer.status_code}: {answer.text[:200]} — check the "
            "serve's project and write key"
        )
    body = answer.json()
    refused = body.get("quarantined") if isinstance(body, dict) else None
    if refused:
        first = refused[0]
        raise InputError(
            f"serve quarantined {len(refused)} cohort messages (first: {first.get('code')}: "
            f"{first.get('message')}) — fix the cohort's events"
        )
