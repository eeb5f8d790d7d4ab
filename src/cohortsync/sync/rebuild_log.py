"""Rebuilds under way, one JSON file per destination: what a rerun of `sync --reconcile` needs to
finish a rebuild that stopped midway (its members' digest, its seed, requests acknowledged)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import orjson

FOLDER = ".cohortsync/reconcile"


@dataclass(frozen=True)
class Underway:
    """A rebuild started and not finished: `digest` of the members it sends, the `seed` of its
    requests, how many of them the platform acknowledged (`done`) of `total` (0: unknown)."""

    digest: str
    seed: str
    done: int


class RebuildLog:
    """The rebuilds under way of one destination, kept across runs (and crashes)."""

    def __init__(self, root: Path, destination: str) -> None:
        self.path = root / FOLDER / f"{destination}.json"

    def get(self, audience: str) -> Underway | None:
        """The audience's rebuild under way, if one is."""
        found = self._read().get(audience)
        if not isinstance(found, dict):
            return None
        return Underway(str(found["digest"]), str(found["seed"]), int(found["done"]))

    def save(self, audience: str, underway: Underway) -> None:
        """Record progress; written to a new file then renamed, so a crash leaves one whole."""
        every = self._read()
        every[audience] = {"digest": underway.digest, "seed": underway.seed, "done": underway.done}
        self._write(every)

    def finish(self, audience: str) -> None:
        """Forget a rebuild the platform acknowledged in full."""
        every = self._read()
        if every.pop(audience, None) is not None:
            self._write(every)

    def _read(self) -> dict[str, object]:
        try:
            loaded = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def _write(self, every: dict[str, object]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = self.path.with_suffix(".tmp")
        fresh.write_bytes(orjson.dumps(every, option=orjson.OPT_SORT_KEYS))
        os.replace(fresh, self.path)
