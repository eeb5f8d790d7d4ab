"""The capture log of a fake: every request exactly as it arrived, and what it was answered.

Tests scan it to prove what left cohortsync (reliability.md §4.7 P-1: no raw email or phone in
any ad-platform request) and to reconcile counts against the fake's own state.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import orjson


@dataclass
class Captured:
    """One request as received: method, path, raw query, headers, raw body, and the answer."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    status: int | None = None
    fault: str | None = None

    @property
    def params(self) -> list[tuple[str, str]]:
        """The query string parameters, decoded, in order."""
        return parse_qsl(self.query, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        """The first value of a header, looked up case-insensitively."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def json(self) -> Any:
        """The body parsed as JSON (raises if it is not JSON)."""
        return orjson.loads(self.body)

    def text(self) -> str:
        """Everything the request carried, as text, also URL-decoded, for scanning."""
        raw = "\n".join(
            [
                f"{self.method} {self.path}?{self.query}",
                *(f"{key}: {value}" for key, value in self.headers),
                self.body.decode("utf-8", "replace"),
            ]
        )
        return raw + "\n" + unquote_plus(raw)


class CaptureLog:
    """The requests a fake received, in arrival order; safe to read while the server runs."""

    def __init__(self) -> None:
        self._items: list[Captured] = []
        self._lock = threading.Lock()

    def append(self, item: Captured) -> None:
        """Record one request (called by the server as the request arrives)."""
        with self._lock:
            self._items.append(item)

    def snapshot(self) -> list[Captured]:
        """A copy of the log as it stands."""
        with self._lock:
            return list(self._items)

    def find(self, needle: str) -> list[Captured]:
        """The requests whose URL, headers or body contain `needle` (case-insensitive)."""
        wanted = needle.lower()
        return [item for item in self.snapshot() if wanted in item.text().lower()]

    def to(self, path_part: str, method: str | None = None) -> list[Captured]:
        """The requests whose path contains `path_part` (and with this method, if given)."""
        return [
            item
            for item in self.snapshot()
            if path_part in item.path and (method is None or item.method == method.upper())
        ]

    def clear(self) -> None:
        """Forget every recorded request."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self) -> Iterator[Captured]:
        return iter(self.snapshot())

    def __getitem__(self, index: int) -> Captured:
        with self._lock:
            return self._items[index]
