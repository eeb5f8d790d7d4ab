"""Every `cohortsync` command given bad arguments prints one line saying what is wrong and what
to do, exits non-zero, and never prints a traceback.

Most cases run the real entry point `main()` in this process (argv patched, stdout and stderr
captured); a handful run the installed script, as a user's shell would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cohortsync.cli import app, main
from cohortsync.cli_errors import TRACEBACK_VARIABLE
from cohortsync.server.serve_file import SERVE_FILE
from tests.conftest import PROJECT_YAML, free_port, wait_until_healthy

SCRIPT = Path(sys.executable).with_name("cohortsync")
EVENT = {
    "type": "identify",
    "messageId": "errors-1",
    "userId": "u1",
    "timestamp": "2026-05-01T10:00:00Z",
    "traits": {"plan": "pro"},
}
CORRUPT_YAML = "store: [unclosed\n  - : :\n"


@dataclass(frozen=True)
class Ran:
    """What one run of the command left: its exit code and its two streams."""

    code: int
    stdout: str
    stderr: str


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COHORTSYNC_PROJECT", TRACEBACK_VARIABLE):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A valid project with an events file, a corrupt project, and a folder with no project."""
    good = tmp_path_factory.mktemp("good")
    (good / "cohortsync.yml").write_text(PROJECT_YAML, encoding="utf-8")
    (good / "events.jsonl").write_text(json.dumps(EVENT) + "\n", encoding="utf-8")
    (good / "events.txt").write_text(json.dumps(EVENT) + "\n", encoding="utf-8")
    corrupt = tmp_path_factory.mktemp("corrupt")
    (corrupt / "cohortsync.yml").write_text(CORRUPT_YAML, encoding="utf-8")
    return {"good": good, "corrupt": corrupt, "none": tmp_path_factory.mktemp("none")}


def run_main(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Ran:
    """Run `main()` as the `cohortsync` script does, in this process."""
    monkeypatch.setattr(sys, "argv", ["cohortsync", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr()
    return Ran(int(exited.value.code or 0), out.out, out.err)


def run_script(*args: str, cwd: Path) -> Ran:
    """Run the installed `cohortsync` script in an 80-column terminal."""
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    for name in ("COHORTSYNC_PROJECT", TRACEBACK_VARIABLE):
        env.pop(name, None)
    done = subprocess.run(
        [str(SCRIPT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def assert_says(ran: Ran, *fragments: str) -> None:
    """Non-zero exit, no traceback, and the first line of stderr is the whole error."""
    assert ran.code != 0, ran
    assert "Traceback" not in ran.stdout + ran.stderr, ran.stderr
    lines = ran.stderr.splitlines()
    assert lines, ran
    assert lines[0].startswith("error: "), ran.stderr
    for fragment in fragments:
        assert fragment in lines[0], ran.stderr


# Each case: the arguments ({good}, {corrupt}, {none} name the folders) and what the first
# line must say: what is wrong, and what to do.
CASES: list[tuple[str, list[str]]] = [
    ("--bogus", ["no such option: --bogus", "cohortsync --help"]),
    ("-p", ["'-p' requires an argument", "cohortsync --help"]),
    ("init --bogus", ["no such option: --bogus", "cohortsync init --help"]),
    ("init {good}", ["already exists", "--force"]),
    ("demo --profiles abc -p {none}", ["'--profiles'", "valid integer", "demo --help"]),
    ("demo --profiles 0 -p {none}", ["'--profiles'", "greater than or equal to 1"]),
    ("demo -p {corrupt}", ["cohortsync.yml:2:", "not valid YAML"]),
    ("serve --port abc -p {good}", ["'--port'", "valid integer", "serve --help"]),
    ("serve --port 99999 -p {good}", ["'--port'", "65535"]),
    ("serve --role worker -p {good}", ["--role worker needs --bus"]),
    ("serve --role nobody -p {good}", ["'--role'", "serve --help"]),
    ("serve -p {corrupt}", ["cohortsync.yml:2:"]),
    ("ingest -p {good}", ["missing argument", "ingest --help"]),
    ("ingest {none}/missing.jsonl -p {good}", ["missing.jsonl: no such file", "check the path"]),
    ("ingest {none} -p {good}", ["is a folder", "name its files"]),
    ("ingest {good}/events.txt -p {good}", ["cannot tell the format", ".jsonl"]),
    ("ingest {good}/events.jsonl -p {none}", ["no cohortsync.yml here", "cohortsync init"]),
    ("profile -p {good}", ["missing argument", "profile --help"]),
    ("profile zzz:abc -p {good}", ["unknown identifier kind 'zzz'", "user_id:"]),
    ("profile email:nobody@example.com -p {good}", ["no profile"]),
    ("stats extra -p {good}", ["unexpected extra argument", "stats --help"]),
    ("stats -p {none}", ["no cohortsync.yml here", "cohortsync init"]),
    ("stats -p {corrupt}", ["cohortsync.yml:2:", "not valid YAML"]),
    ("compute --at nope -p {good}", ["--at 'nope'", "2026-05-01T12:00:00Z"]),
    ("compute --at 2026-13-45 -p {good}", ["--at '2026-13-45'"]),
    ("members -p {good}", ["missing argument", "members --help"]),
    ("members nope -p {good}", ["'nope'"]),
    ("members nope --format xml -p {good}", ["'--format'", "'xml'", "members --help"]),
    ("members nope --at yesterday -p {good}", ["--at 'yesterday'"]),
    ("preview -p {good}", ["missing argument", "preview --help"]),
    ("preview nope -p {good}", ["'nope'"]),
    ("sync --audience nope -p {good}", ["no audience named 'nope'"]),
    ("sync --destination nope -p {good}", ["no destination named 'nope'"]),
    ("sync --bogus -p {good}", ["no such option: --bogus", "sync --help"]),
    ("status --bogus -p {good}", ["no such option: --bogus", "status --help"]),
    ("status -p {corrupt}", ["cohortsync.yml:2:"]),
    ("normalize email", ["missing argument", "normalize --help"]),
    ("normalize foo bar", ["unknown identifier kind 'foo'"]),
    ("normalize email a@b.co --for bing", ["'--for'", "'bing'"]),
    ("normalize phone abc", ["not valid for meta"]),
]


@pytest.mark.parametrize(("command", "says"), CASES, ids=[c for c, _ in CASES])
def test_bad_arguments_print_one_line_that_says_what_to_do(
    command: str,
    says: list[str],
    folders: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(folders["none"])
    args = [part.format(**folders) for part in command.split()]

    ran = run_main(args, monkeypatch, capsys)

    assert_says(ran, *says)
    assert "nobody@example.com" not in ran.stderr + ran.stdout


def test_an_unknown_command_says_where_the_list_is(tmp_path: Path) -> None:
    ran = run_script("stauts", cwd=tmp_path)

    assert ran.code == 2
    assert_says(ran, "no such command 'stauts'", "'status'", "cohortsync --help")
    assert len(ran.stderr.splitlines()) == 1


def test_a_missing_file_ingests_nothing_and_says_so(folders: dict[str, Path]) -> None:
    good = folders["good"]

    ran = run_script("ingest", "events.jsonl", "missing.jsonl", "-p", str(good), cwd=good)

    assert_says(ran, "missing.jsonl: no such file", "nothing was ingested")
    assert ran.stderr.count("\n") == 1


def test_bare_command_prints_the_help(tmp_path: Path) -> None:
    ran = run_script(cwd=tmp_path)

    assert ran.code != 0
    assert "Usage: cohortsync" in ran.stdout
    assert "Traceback" not in ran.stdout + ran.stderr


# --- the project option before the command -----------------------------------------------------


def test_project_option_before_the_command_is_accepted(folders: dict[str, Path]) -> None:
    ran = run_script("-p", str(folders["good"]), "stats", "--json", cwd=folders["none"])

    assert ran.code == 0, ran.stderr
    assert set(json.loads(ran.stdout)) == {
        "events",
        "profiles",
        "identifiers",
        "quarantined",
        "test_profiles",
    }


@pytest.mark.parametrize(
    ("args", "env", "used"),
    [
        (["-p", "{good}", "stats"], {"COHORTSYNC_PROJECT": "{none}"}, "good"),
        (["--project", "{none}", "stats", "-p", "{good}"], {}, "good"),
        (["-p", "{good}", "stats", "--project", "{none}"], {}, "none"),
        (["stats"], {"COHORTSYNC_PROJECT": "{none}"}, "none"),
    ],
    ids=["before-beats-env", "after-beats-before", "after-beats-before-2", "env-alone"],
)
def test_the_project_named_nearest_the_command_wins(
    args: list[str], env: dict[str, str], used: str, folders: dict[str, Path]
) -> None:
    env = {k: v.format(**folders) for k, v in env.items()}
    result = CliRunner(env=env).invoke(app, [a.format(**folders) for a in args])

    if used == "good":
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0
        assert str(folders["none"]) in str(result.exception)


# --- a store held by a running `cohortsync serve` ----------------------------------------------


@pytest.fixture(scope="module")
def serving(folders: dict[str, Path]) -> Iterator[subprocess.Popen[bytes]]:
    """`cohortsync serve` holding the good project's DuckDB store."""
    port = free_port()
    server = subprocess.Popen(
        [str(SCRIPT), "serve", "--project", str(folders["good"]), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", 20, server)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_a_store_held_by_serve_is_named_with_its_pid_from_the_script(
    folders: dict[str, Path], serving: subprocess.Popen[bytes]
) -> None:
    good = folders["good"]
    announced = good / SERVE_FILE
    hidden = announced.with_name("serve.hidden.json")
    announced.rename(hidden)  # a holder that wrote no serve file: nothing to go through
    try:
        ran = run_script("stats", "-p", str(good), cwd=good)
    finally:
        hidden.rename(announced)

    assert_says(ran, "store.duckdb is in use", f"pid {serving.pid}", "cohortsync serve", "stop it")
    assert len(ran.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "command",
    [
        "demo --profiles 5",
        "ingest {good}/events.jsonl",
        "compute",
        "serve --port 1",
    ],
)
def test_a_store_held_by_serve_stops_every_command_with_one_line(
    command: str,
    folders: dict[str, Path],
    serving: subprocess.Popen[bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [part.format(**folders) for part in command.split()] + ["-p", str(folders["good"])]

    ran = run_main(args, monkeypatch, capsys)

    assert_says(ran, "is in use by another process", f"pid {serving.pid}")


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("profile user_id:u1", "no profile has user_id u1"),
        ("members nope", "no segment or audience is named 'nope'"),
        ("preview nope", "no segment or audience is named 'nope'"),
    ],
)
def test_a_read_while_serve_holds_the_store_fails_through_it_in_one_line(
    command: str,
    said: str,
    folders: dict[str, Path],
    serving: subprocess.Popen[bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [*command.split(), "-p", str(folders["good"])]

    ran = run_main(args, monkeypatch, capsys)

    assert_says(ran, said)
