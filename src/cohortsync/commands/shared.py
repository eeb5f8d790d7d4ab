"""What every `cohortsync` command shares: the Typer app, consoles, common options, output."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cohortsync.engine import parse_instant
from cohortsync.errors import InputError

app = typer.Typer(
    help="cohortsync: segments kept true as events arrive, synced where they act.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

_PROJECT_KEY = "cohortsync.project"  # ctx.meta: `-p DIR` given before the command


def _project(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """`--project` after the command, else `-p DIR` before it, else $COHORTSYNC_PROJECT."""
    source = ctx.get_parameter_source(param.name) if param.name else None
    if source is not None and source.name == "COMMANDLINE":
        return value
    given: Path | None = ctx.meta.get(_PROJECT_KEY)
    return given or value


ProjectOption = Annotated[
    Path | None,
    typer.Option(
        "--project",
        "-p",
        envvar="COHORTSYNC_PROJECT",
        help="Project folder holding cohortsync.yml (default: the current folder).",
        show_default=False,
        callback=_project,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
AtOption = Annotated[
    str | None,
    typer.Option(
        "--at",
        help="An ISO-8601 instant, e.g. 2026-05-01T12:00:00Z (no zone means UTC; default now).",
        show_default=False,
    ),
]


def parse_at(text: str | None) -> datetime | None:
    """The `--at` option as an aware datetime; a bad value is an InputError."""
    if text is None:
        return None
    try:
        return parse_instant(text)
    except InputError as exc:
        raise InputError(f"--at {exc}") from None


@contextmanager
def progress_bar() -> Iterator[Progress]:
    """A progress bar on stderr that stays when its work is done, and goes when the work
    fails, so that the error is the first line a user reads."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    bar.start()
    try:
        yield bar
    except BaseException:
        bar.live.transient = True
        bar.live.stop()  # not bar.stop(): that ends with a blank line when not on a terminal
        raise
    bar.stop()


def show(value: Any, as_json: bool, picture: Callable[[], RenderableType]) -> None:
    """Print `value` as JSON, or the terminal picture of it."""
    if as_json:
        print_json(value)
    else:
        console.print(picture())


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2).decode() + "\n")


@app.callback()
def _before_the_command(
    ctx: typer.Context,
    project: Annotated[
        Path | None,
        typer.Option(
            "--project",
            "-p",
            help="Project folder for the command that follows (as its own --project does).",
            show_default=False,
        ),
    ] = None,
) -> None:
    if project is not None:
        ctx.meta[_PROJECT_KEY] = project


def write_out(out: Path, text: str, example: str) -> None:
    """Write a command's `--out` file (folders made as needed); a bad path is one line."""
    if out.is_dir():
        raise InputError(f"--out {out} is a folder: name a file, e.g. {out}/{example}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror} — choose another --out") from None
