"""The ASGI layer every fake sits behind: record each request, then apply the fault script.

Order matters and is the contract of `faults.py`: a request is captured first (so even a faulted
attempt is visible to PII scans and counts), then a scripted fault answers instead of the fake,
before the fake validates anything.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.fakes.capture import Captured, CaptureLog
from tests.fakes.faults import Fault, Faults


class Harness:
    """Wraps a fake's app with its capture log and fault injector."""

    def __init__(self, app: ASGIApp, faults: Faults, log: CaptureLog) -> None:
        self.app = app
        self.faults = faults
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Capture, fault or forward one HTTP request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        entry = Captured(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]),
            body=body,
        )
        self.log.append(entry)
        fault = self.faults.take(entry.method, entry.path)
        if fault is None:
            await self.app(scope, _replay(body, receive), _recording(send, entry))
        elif fault.delay > 0:
            await self._late(scope, body, receive, send, entry, fault)
        else:
            entry.fault = fault.kind
            await _send_fault(_recording(send, entry), fault)

    async def _late(
        self, scope: Scope, body: bytes, receive: Receive, send: Send, entry: Captured, fault: Fault
    ) -> None:
        """A timeout: hold the answer past the client's patience (handling it first if asked)."""
        entry.fault = fault.kind
        if not fault.processed:
            await self.faults.hold(fault.delay)
            await _send_fault(_recording(send, entry), fault)
            return
        held: list[Message] = []

        async def keep(message: Message) -> None:
            held.append(message)

        await self.app(scope, _replay(body, receive), _recording(keep, entry))
        await self.faults.hold(fault.delay)
        for message in held:
            await send(message)


async def _read_body(receive: Receive) -> bytes:
    """The whole request body, as the raw bytes the client sent."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the already-read body to the app, then defers to the client."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _recording(send: Send, entry: Captured) -> Send:
    """A `send` that notes the response status in the capture log."""

    async def record(message: Message) -> None:
        if message["type"] == "http.response.start":
            entry.status = int(message["status"])
        await send(message)

    return record


async def _send_fault(send: Send, fault: Fault) -> None:
    """Answer with the fault's status, headers and body."""
    headers = [(b"content-type", b"application/json")]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in fault.headers]
    headers.append((b"content-length", str(len(fault.body)).encode()))
    await send({"type": "http.response.start", "status": fault.status, "headers": headers})
    await send({"type": "http.response.body", "body": fault.body})
