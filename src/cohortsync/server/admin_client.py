"""The CLI's way through a running `serve`: the engine's read methods over the admin API.

When `serve` holds the DuckDB store, a command gets a `RemoteEngine` instead of an `Engine`:
the same methods, returning the same Python types, so every command prints as it always does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from cohortsync.config.loader import LoadedProject, load_project
from cohortsync.engine import (
    Catalog,
    Drift,
    Engine,
    Member,
    Membership,
    Preview,
    ProfileView,
    ProfileWhy,
    Report,
    RouteStatus,
    Schedule,
    SyncReport,
    SyncRunRecord,
)
from cohortsync.errors import ConfigError, InputError, NotFoundError, StoreError, StoreInUseError
from cohortsync.server.admin_models import (
    PREFIX,
    ProfileOut,
    Requeued,
    StatusOut,
    SyncOut,
    profile_view,
    rebuilt,
    sync_report,
)
from cohortsync.server.serve_file import SERVE_FILE, ServeInfo, live_server

TIMEOUT = httpx.Timeout(600.0, connect=5.0)
"""A compute or a sync over a large store may take minutes; a server that is gone, not."""


@contextmanager
def engine_or_server(project: str | Path | None) -> Iterator[Engine | RemoteEngine]:
    """The project's engine; or, when a running `serve` holds its DuckDB store, a client of
    that server's admin API (a stale `.cohortsync/serve.json` leaves the store's error)."""
    loaded = load_project(project)
    try:
        engine = Engine(loaded)
    except StoreInUseError:
        found = live_server(loaded.root, loaded.store_location())
        if found is None:
            raise
        with RemoteEngine(loaded, found) as remote:
            yield remote
        return
    with engine:
        yield engine


class RemoteEngine:
    """The engine methods the read commands call, answered by a running `serve`."""

    def __init__(
        self, loaded: LoadedProject, server: ServeInfo, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.loaded = loaded
        self.project = loaded.project
        self.server = server
        self._http = httpx.Client(
            base_url=server.url + PREFIX,
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=TIMEOUT,
            transport=transport,
        )
        self._status: dict[int, StatusOut] = {}
        self._memberships: dict[str, list[Membership]] = {}

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection to the server."""
        self._http.close()

    # -- the engine's methods -----------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """Counts of events, profiles, identifiers and quarantined rows."""
        found: dict[str, dict[str, int]] = self._get("/stats")
        return found

    def sync_status(self) -> list[RouteStatus]:
        """Per audience × destination (and conversion stream): desired, delivered, waiting."""
        return self._read_status(5).routes

    def drift(self, http: object = None, status: list[RouteStatus] | None = None) -> list[Drift]:
        """What ad platforms read back, as the server found it."""
        return self._read_status(5).drift

    def sync_runs(self, limit: int = 10) -> list[SyncRunRecord]:
        """The latest sync runs, newest first."""
        return self._read_status(limit).runs[:limit]

    def schedules(self) -> list[Schedule]:
        """Each audience's refresh: `realtime`, or its cadence with last and next run."""
        return self._read_status(5).schedules

    def members(self, name: str, at: datetime | None = None) -> list[Member]:
        """Members of a segment or audience now, or as of `at`."""
        found = self._get(f"/audiences/{_part(name)}/members", at=_iso(at))
        return rebuilt(list[Member], found)

    def preview(self, name: str, at: datetime | None = None) -> Preview:
        """Size, sample, overlaps and explanation of a segment or audience, computed live."""
        return rebuilt(Preview, self._get(f"/audiences/{_part(name)}/preview", at=_iso(at)))

    def find_profile(self, identifier: str) -> ProfileView:
        """Look a profile up as `Engine.find_profile` does."""
        out = ProfileOut.model_validate(self._get("/profile", identifier=identifier))
        view, held = profile_view(out)
        self._memberships[view.profile_id] = held
        return view

    def profile_memberships(self, profile_id: str) -> list[Membership]:
        """The memberships read with the profile (`find_profile` first)."""
        return self._memberships.get(profile_id, [])

    def explain_profile(
        self, identifier: str, audience: str | None = None, at: datetime | None = None
    ) -> ProfileWhy:
        """Why the profile is in or out of each audience (or the one named), as of `at`."""
        found = self._get("/explain", identifier=identifier, audience=audience, at=_iso(at))
        return rebuilt(ProfileWhy, found)

    def report(self, since: datetime, until: datetime, audience: str | None = None) -> Report:
        """Holdout lift of each audience with a holdout for entries in [since, until]."""
        found = self._get("/report", since=_iso(since), until=_iso(until), audience=audience)
        return rebuilt(Report, found)

    def catalog(self) -> Catalog:
        """Every audience for the teams that use it."""
        return rebuilt(Catalog, self._get("/catalog"))

    def retry_dead(self, audience: str | None = None, destination: str | None = None) -> int:
        """Queue dead letters again; return how many."""
        body = {"audience": audience, "destination": destination}
        return Requeued.model_validate(self._post("/dead-letters/retry", body)).queued

    def sync(
        self,
        audience: str | None = None,
        destination: str | None = None,
        dry_run: bool = False,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> SyncReport:
        """Plan and deliver now, in the server, between its own delivery rounds."""
        body = {"audience": audience, "destination": destination, "dry_run": dry_run}
        return sync_report(SyncOut.model_validate(self._post("/sync", body)))

    # -- HTTP ---------------------------------------------------------------------------------

    def _read_status(self, runs: int) -> StatusOut:
        """`/status` once per command (its four parts are read together)."""
        for limit, found in self._status.items():
            if limit >= runs:
                return found
        self._status[runs] = StatusOut.model_validate(self._get("/status", runs=runs))
        return self._status[runs]

    def _get(self, path: str, **params: str | int | None) -> Any:
        given = {k: v for k, v in params.items() if v is not None}
        return self._answer(lambda: self._http.get(path, params=given))

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._answer(lambda: self._http.post(path, json=body))

    def _answer(self, send: Callable[[], httpx.Response]) -> Any:
        where = f"the running `cohortsync serve` (pid {self.server.pid}, {self.server.url})"
        try:
            response = send()
        except httpx.HTTPError as exc:
            raise StoreError(
                f"{where} holds the store but did not answer ({type(exc).__name__}: {exc}) — "
                f"check it, or stop it and run this again (then {SERVE_FILE} is removed)"
            ) from None
        if response.is_success:
            return response.json()
        raise _error(response, where)


def _error(response: httpx.Response, where: str) -> Exception:
    """The error the engine would have raised, from the server's 4xx body; else one line."""
    try:
        detail = response.json().get("detail", {})
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = "", response.text[:200].replace("\n", " ")
    if response.status_code == 404 and code == "not_found":
        return NotFoundError(message)
    if response.status_code in (404, 422) and code in ("unknown_name", "bad_input"):
        return InputError(message)
    if response.status_code == 409 and code == "project":
        return ConfigError(message)
    if response.status_code == 401:
        return StoreError(
            f"{where} refused the token of {SERVE_FILE}: {message} — restart serve, or stop it "
            "and run this again"
        )
    return StoreError(f"{where} answered {response.status_code}: {message}")


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _part(name: str) -> str:
    """A name as one URL path segment."""
    return quote(name, safe="")
