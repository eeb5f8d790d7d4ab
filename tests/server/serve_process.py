"""`cohortsync serve` in a subprocess, for tests that need the real command and its stderr."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port, wait_until_healthy

COHORTSYNC = Path(sys.executable).with_name("cohortsync")


@dataclass(frozen=True)
class Served:
    """A running `cohortsync serve`: where it listens, and the process."""

    url: str
    port: int
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def serving(
    project_dir: Path, log: Path, *options: str, start_within: float = 30
) -> Iterator[Served]:
    """`cohortsync serve --project project_dir` with `options`, its stderr written to `log`,
    answering within `start_within` seconds; stopped (SIGTERM, which commits what is queued)
    on exit."""
    port = free_port()
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(COHORTSYNC), "serve", "--project", str(project_dir), "--port", str(port),
             *options],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(url, start_within, process)
            yield Served(url, port, process)
        finally:
            process.terminate()
            process.wait(timeout=60)
