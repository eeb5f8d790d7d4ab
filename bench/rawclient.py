"""The benchmarks' load-generator client: raw keep-alive HTTP/1.1 sockets, pre-encoded requests."""

from __future__ import annotations

import asyncio
import base64


class RawClient:
    """A minimal keep-alive HTTP/1.1 client over asyncio streams, with pre-encoded requests.

    httpx costs ~1 ms of CPU a request, which on two shared cores makes the load generator,
    not the server, the bottleneck; this one costs a few tens of microseconds.
    """

    def __init__(self, url: str, connections: int, write_key: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port, self.size = host, int(port), connections
        self.auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )

    async def __aenter__(self) -> RawClient:
        for _ in range(self.size):
            await self.free.put(await asyncio.open_connection(self.host, self.port))
        return self

    async def __aexit__(self, *_: object) -> None:
        while not self.free.empty():
            _, writer = self.free.get_nowait()
            writer.close()

    def request(self, path: str, body: bytes) -> bytes:
        """The bytes of one POST, encoded once, ahead of the measure."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: {self.auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send one request on a free connection; return its status and body."""
        reader, writer = await self.free.get()
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
        except BaseException:
            writer.close()  # a broken or abandoned connection is replaced
            await self.free.put(await asyncio.open_connection(self.host, self.port))
            raise
        await self.free.put((reader, writer))
        return status, body
