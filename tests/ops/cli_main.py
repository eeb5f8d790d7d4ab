"""Run `cohortsync` as its script does (errors printed as one line, never raised), in process."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from cohortsync.cli import main


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


def run_main(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Ran:
    """`main()` with `args` as argv; its exit code, stdout and stderr."""
    monkeypatch.setattr(sys, "argv", ["cohortsync", *args])
    monkeypatch.setenv("COLUMNS", "250")
    code = 0
    try:
        main()
    except SystemExit as exited:
        code = int(exited.code or 0)
    out = capsys.readouterr()
    return Ran(code, out.out, out.err)
