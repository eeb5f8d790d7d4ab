"""A contract fake of the Acme Lists API, built on cohortsync's fake harness (faults, capture)."""

from __future__ import annotations

import re
import threading
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.destinations.thirdparty.acme_lists import MAX_MEMBERS
from tests.fakes.base import FakeServer

_SHA256 = re.compile(r"[0-9a-f]{64}")


class AcmeListsFake(FakeServer):
    """Lists of members keyed by email hash; a repeated Idempotency-Key is answered from
    memory; more than 100 members is a 413; a bad token a 401."""

    def __init__(self, token: str = "acme-token") -> None:
        super().__init__(self._build_app())
        self.token = token
        self._lock = threading.Lock()
        self._lists: dict[str, dict[str, dict[str, str]]] = {}
        self._answers: dict[str, bytes] = {}

    def members(self, name: str) -> set[str]:
        """The email hashes (or external ids) of a list's members."""
        with self._lock:
            return set(self._lists.get(name, {}))

    def state(self) -> tuple[dict[str, dict[str, dict[str, str]]], list[str]]:
        """Every list and the idempotency keys applied."""
        with self._lock:
            lists = {name: dict(members) for name, members in self._lists.items()}
            return lists, sorted(self._answers)

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.add_api_route("/v1/lists/{name}/members", self._members, methods=["POST"])
        return app

    async def _members(self, name: str, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"error": "invalid token"}, status_code=401)
        key = request.headers.get("idempotency-key")
        if not key:
            return JSONResponse({"error": "Idempotency-Key is required"}, status_code=400)
        body = orjson.loads(await request.body())
        members = body.get("members")
        if body.get("op") not in ("add", "remove") or not isinstance(members, list):
            return JSONResponse({"error": "op and members are required"}, status_code=400)
        if len(members) > MAX_MEMBERS:
            return JSONResponse(
                {"error": f"at most {MAX_MEMBERS} members per request"}, status_code=413
            )
        with self._lock:
            if key not in self._answers:
                self._answers[key] = orjson.dumps(self._apply(name, body["op"], members))
            answer = self._answers[key]
        return Response(answer, media_type="application/json")

    def _apply(self, name: str, op: str, members: list[Any]) -> dict[str, Any]:
        held = self._lists.setdefault(name, {})
        errors = []
        for index, member in enumerate(members):
            email = member.get("email_sha256", "") if isinstance(member, dict) else ""
            external = member.get("external_id", "") if isinstance(member, dict) else ""
            if email and not _SHA256.fullmatch(email):
                errors.append({"index": index, "reason": "email_sha256 is not a SHA-256 hash"})
                continue
            if not (email or external):
                errors.append({"index": index, "reason": "no email_sha256 or external_id"})
                continue
            if op == "add":
                held[email or external] = dict(member)
            else:
                held.pop(email or external, None)
        return {"accepted": len(members) - len(errors), "errors": errors}
