"""How the `cohortsync` command reports a failure: one line saying what is wrong and what to do,
never a traceback."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cohortsync.destinations.http import scrub
from cohortsync.errors import CohortsyncError

try:  # typer ≥ 0.20 carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - typer on top of click
    from click.exceptions import (  # type: ignore[assignment]
        ClickException,
        NoArgsIsHelpError,
        UsageError,
    )

TRACEBACK_VARIABLE = "COHORTSYNC_TRACEBACK"


@dataclass(frozen=True)
class Failure:
    """What to print on stderr (one line, plain text) and the exit code."""

    message: str
    exit_code: int


def describe(exc: Exception) -> Failure | None:
    """The report of `exc`, its first line saying it all; an empty message when there is
    nothing to add (a bare `cohortsync` has printed its help); None when it must propagate
    (COHORTSYNC_TRACEBACK=1 asks for the traceback of a bug)."""
    if isinstance(exc, NoArgsIsHelpError):
        return Failure("", exc.exit_code)
    if isinstance(exc, CohortsyncError):
        return Failure(str(exc), 1)
    if isinstance(exc, UsageError):
        return Failure(_usage(exc), exc.exit_code)
    if isinstance(exc, ClickException):
        return Failure(_one_line(exc.format_message()), exc.exit_code)
    if isinstance(exc, OSError) and exc.filename is not None:
        return Failure(_file_problem(exc), 1)
    if os.environ.get(TRACEBACK_VARIABLE):
        return None
    return Failure(
        f"unexpected {type(exc).__name__}: {_one_line(scrub(str(exc)))} — run again with "
        f"{TRACEBACK_VARIABLE}=1 to see where, and report it if cohortsync is at fault",
        1,
    )


def _usage(exc: UsageError) -> str:
    """A usage error with the help command that shows what the command accepts."""
    command = exc.ctx.command_path if exc.ctx is not None else "cohortsync"
    text = exc.format_message()
    if text.startswith("No such command"):
        # "No such command 'foo'. Did you mean 'stats'?"
        return f"{_lower_first(text)} — run `{command} --help` for the list"
    return f"{_lower_first(text)} — run `{command} --help` for its options"


def _file_problem(exc: OSError) -> str:
    """A file the user named that cannot be read, and what to check."""
    reason = (exc.strerror or type(exc).__name__).lower()
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename}: no such file or folder — check the path"
    if isinstance(exc, PermissionError):
        return f"{exc.filename}: permission denied — check who may read and write it"
    return f"{exc.filename}: {reason}"


def _lower_first(text: str) -> str:
    return _one_line(text[:1].lower() + text[1:]).removesuffix(".")


def _one_line(text: str) -> str:
    """Newlines would split the message: the first line must say it all."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())
