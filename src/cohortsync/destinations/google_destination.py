"""What both Data Manager destinations share: the session, the quota and the diagnostics log.

The client-side limiter is shared by every destination using the same credentials against the
same token endpoint in this process, as Google counts the quota per Cloud project.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from cohortsync.destinations.base import Destination, DestinationConfig, DestinationContext
from cohortsync.destinations.google_api import GoogleClient, RequestLimiter
from cohortsync.destinations.google_auth import GoogleConfig, GoogleSession
from cohortsync.destinations.google_diagnostics import DiagnosticsLog, collect

G = TypeVar("G", bound=GoogleConfig)
DIAGNOSTICS_DIR = ".cohortsync/diagnostics"
_LIMITERS: dict[tuple[str, ...], RequestLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter_for(config: GoogleConfig) -> RequestLimiter:
    """The process-wide limiter of the Cloud project behind these credentials."""
    key = (
        config.service_account_file or config.client_id or "",
        config.token_uri or "",
        str(config.requests_per_minute),
    )
    with _LIMITERS_LOCK:
        found = _LIMITERS.get(key)
        if found is None:
            found = _LIMITERS[key] = RequestLimiter(config.requests_per_minute)
        return found


class GoogleDestination(Destination[G]):
    """A Data Manager destination: authorised calls, the quota kept, diagnostics followed."""

    def __init__(self, config: DestinationConfig, context: DestinationContext) -> None:
        super().__init__(config, context)
        self.session = GoogleSession(self.settings, context)
        self.client = GoogleClient(self.session, limiter_for(self.settings))
        folder = context.project_dir / DIAGNOSTICS_DIR
        self.diagnostics_log = DiagnosticsLog(folder / f"{context.name}.json")

    def remember(self, batch_id: str, audience: str | None, request_ids: Sequence[str]) -> None:
        """Keep a batch's request ids to ask Google about its diagnostics later."""
        delay = self.settings.diagnostics_delay_seconds
        self.diagnostics_log.add(batch_id, audience, request_ids, self.context.clock(), delay)

    def collect_diagnostics(self) -> Mapping[str, Mapping[str, int]]:
        """Match rates and error counts Google now reports for earlier batches."""
        return collect(
            self.diagnostics_log,
            self._retrieve,
            self.context.clock(),
            self.settings.diagnostics_delay_seconds,
        )

    def _retrieve(self, request_id: str) -> dict[str, Any]:
        what = f"{self.kind} {self.context.name}: diagnostics of a request"
        request = self.client.prepare(
            "GET", "v1/requestStatus:retrieve", params={"requestId": request_id}
        )
        return self.client.call(request, what)
