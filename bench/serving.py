"""Helpers for benchmarks that run `cohortsync serve` as a separate process."""

from __future__ import annotations

import signal
import subprocess


def stop_gracefully(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server process with SIGINT (it drains and closes its store), killing it after 60 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
