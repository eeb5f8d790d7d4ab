"""Read a request body within a byte limit, gzip included, without trusting Content-Length."""

from __future__ import annotations

import zlib

from starlette.requests import Request


class BodyError(Exception):
    """A body we refuse: too large, badly compressed, or in an encoding we do not speak."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


async def read_body(request: Request, limit: int, too_large_code: str) -> bytes:
    """The (decompressed) body, refusing more than `limit` bytes before reading them all."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise BodyError(415, "unsupported_encoding", "Content-Encoding must be gzip or absent")
    declared = request.headers.get("content-length")
    if encoding != "gzip" and declared and declared.isdigit() and int(declared) > limit:
        raise BodyError(400, too_large_code, _too_large(limit))
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise BodyError(400, too_large_code, _too_large(limit))
    if encoding != "gzip":
        return bytes(raw)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(bytes(raw), limit + 1)
    except zlib.error:
        raise BodyError(400, "invalid_gzip", "the body is not valid gzip") from None
    if len(body) > limit or inflater.unconsumed_tail:
        raise BodyError(400, too_large_code, _too_large(limit))
    if not inflater.eof:
        raise BodyError(400, "invalid_gzip", "the gzip body is truncated")
    if inflater.unused_data:
        raise BodyError(400, "invalid_gzip", "send one gzip member per request body")
    return body


def _too_large(limit: int) -> str:
    return f"the request is larger than {limit // 1024} KB: send fewer or smaller messages"
