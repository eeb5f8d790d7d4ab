"""The `cohortsync` command line: init, ingest, stats, profile and demo, and how it reports errors.

In-process runs use Typer's CliRunner; where the exit code and stderr of the real entry point
`main()` matter (errors are printed, never raised as tracebacks), the installed script is run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from cohortsync.cli import DEMO_HISTORY_WEEKS, app
from cohortsync.config.loader import PROJECT_FILE, load_project
from cohortsync.engine import Engine
from cohortsync.errors import InputError

SCRIPT = Path(sys.executable).with_name("cohortsync")

EVENTS = [
    {
        "type": "identify",
        "messageId": "cli-1",
        "userId": "u1",
        "timestamp": "2026-05-01T10:00:00Z",
        "traits": {"email": "Ann@Example.com", "plan": "pro"},
    },
    {
        "type": "track",
        "messageId": "cli-2",
        "userId": "u1",
        "event": "Order Completed",
        "timestamp": "2026-05-01T11:00:00Z",
        "properties": {"revenue": 42.5},
    },
]


@pytest.fixture(autouse=True)
def _no_project_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHORTSYNC_PROJECT", raising=False)
    monkeypatch.delenv("COHORTSYNC_WEB_WRITE_KEY", raising=False)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(app, list(args), catch_exceptions=True)


def json_out(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed `cohortsync` script, as a user's shell would."""
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}
    env.pop("COHORTSYNC_PROJECT", None)
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(e) for e in EVENTS] + ['{"type": "track", "userId": "u1"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def loaded_project(runner: CliRunner, project_dir: Path, events_file: Path) -> Path:
    """The conftest project with EVENTS ingested through the CLI."""
    result = invoke(runner, "ingest", str(events_file), "--project", str(project_dir))
    assert result.exit_code == 0, result.output
    return project_dir


# --- init --------------------------------------------------------------------------------------


def test_init_creates_a_project_that_loads(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "shop"

    result = invoke(runner, "init", str(target))

    assert result.exit_code == 0, result.output
    loaded = load_project(target)
    assert loaded.project.sources["web"].write_key.startswith("wk_")
    assert loaded.store_path() == target.resolve() / ".cohortsync" / "store.duckdb"


def test_init_refuses_to_overwrite_without_force(runner: CliRunner, tmp_path: Path) -> None:
    assert invoke(runner, "init", str(tmp_path)).exit_code == 0
    original = (tmp_path / PROJECT_FILE).read_text(encoding="utf-8")

    refused = invoke(runner, "init", str(tmp_path))

    assert refused.exit_code != 0
    assert isinstance(refused.exception, InputError)
    assert "--force" in str(refused.exception)
    assert (tmp_path / PROJECT_FILE).read_text(encoding="utf-8") == original

    forced = invoke(runner, "init", str(tmp_path), "--force")

    assert forced.exit_code == 0, forced.output
    assert (tmp_path / PROJECT_FILE).read_text(encoding="utf-8") != original
    load_project(tmp_path)


def test_init_refusal_is_a_clean_error_from_the_real_command(tmp_path: Path) -> None:
    (tmp_path / PROJECT_FILE).write_text("store: s.duckdb\n", encoding="utf-8")

    completed = run_script("init", str(tmp_path), cwd=tmp_path)

    assert completed.returncode == 1
    assert "--force" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert (tmp_path / PROJECT_FILE).read_text(encoding="utf-8") == "store: s.duckdb\n"


# --- ingest, stats, profile --------------------------------------------------------------------


def test_ingest_json_reports_what_each_file_did(
    runner: CliRunner, project_dir: Path, events_file: Path
) -> None:
    result = invoke(runner, "ingest", str(events_file), "--project", str(project_dir), "--json")

    report = json_out(result)
    assert report == {
        str(events_file): {"received": 3, "stored": 2, "duplicates": 0, "quarantined": 1}
    }

    again = json_out(
        invoke(runner, "ingest", str(events_file), "--project", str(project_dir), "--json")
    )
    assert again[str(events_file)]["stored"] == 0
    assert again[str(events_file)]["duplicates"] == 2


def test_stats_json_has_totals_for_events_profiles_identifiers_and_quarantine(
    runner: CliRunner, loaded_project: Path
) -> None:
    stats = json_out(invoke(runner, "stats", "--project", str(loaded_project), "--json"))

    assert set(stats) >= {"events", "profiles", "identifiers", "quarantined"}
    for section in ("events", "profiles", "identifiers", "quarantined"):
        assert "total" in stats[section], section
    assert stats["events"]["total"] == 2
    assert stats["events"]["by_type"] == {"identify": 1, "track": 1}
    assert stats["profiles"]["total"] == 1
    assert stats["identifiers"]["by_kind"] == {"email": 1, "user_id": 1}
    assert stats["quarantined"]["total"] == 1


def test_stats_on_a_new_project_prints_zero_totals(runner: CliRunner, project_dir: Path) -> None:
    stats = json_out(invoke(runner, "stats", "--project", str(project_dir), "--json"))
    assert {section: part["total"] for section, part in stats.items()} == {
        "events": 0,
        "profiles": 0,
        "identifiers": 0,
        "quarantined": 0,
        "test_profiles": 0,
    }


def test_stats_tables_are_printed_without_json(runner: CliRunner, loaded_project: Path) -> None:
    result = invoke(runner, "stats", "--project", str(loaded_project))

    assert result.exit_code == 0, result.output
    for word in ("profiles", "events", "identifiers", "quarantined", "identify"):
        assert word in result.stdout


def test_profile_json_prints_identifiers_and_traits(
    runner: CliRunner, loaded_project: Path
) -> None:
    view = json_out(
        invoke(
            runner, "profile", "email:ANN@example.com", "--project", str(loaded_project), "--json"
        )
    )

    assert {(i["kind"], i["value"]) for i in view["identifiers"]} == {
        ("email", "ann@example.com"),
        ("user_id", "u1"),
    }
    assert view["traits"]["plan"] == "pro"
    assert {e["message_id"] for e in view["recent_events"]} == {"cli-1", "cli-2"}
    by_id = json_out(
        invoke(runner, "profile", view["profile_id"], "--project", str(loaded_project), "--json")
    )
    assert by_id["profile_id"] == view["profile_id"]


def test_profile_is_printed_as_tables_without_json(runner: CliRunner, loaded_project: Path) -> None:
    result = invoke(runner, "profile", "user_id:u1", "--project", str(loaded_project))

    assert result.exit_code == 0, result.output
    assert "ann@example.com" in result.stdout
    assert "Order Completed" in result.stdout


def test_project_folder_can_come_from_the_environment(
    runner: CliRunner, loaded_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COHORTSYNC_PROJECT", str(loaded_project))
    stats = json_out(invoke(runner, "stats", "--json"))
    assert stats["events"]["total"] == 2


# --- errors, through the real entry point --------------------------------------------------------

BAD_PROJECT = "store: .cohortsync/store.duckdb\nidentty:\n  primary: email\n"


@pytest.mark.parametrize(
    "command",
    [
        ["stats"],
        ["stats", "--json"],
        ["profile", "email:ann@example.com"],
        ["ingest", "events.jsonl"],
        ["demo", "--profiles", "1"],
        ["serve", "--port", "1"],
    ],
    ids=" ".join,
)
def test_bad_project_file_makes_any_command_fail_with_file_and_line(
    tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / PROJECT_FILE).write_text(BAD_PROJECT, encoding="utf-8")
    (tmp_path / "events.jsonl").write_text(json.dumps(EVENTS[0]) + "\n", encoding="utf-8")

    completed = run_script(*command, "--project", str(tmp_path), cwd=tmp_path)

    assert completed.returncode != 0
    assert f"{PROJECT_FILE}:2:" in completed.stderr
    assert "identty" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert completed.stdout == ""


def test_missing_project_file_tells_the_user_to_run_init(tmp_path: Path) -> None:
    completed = run_script("stats", cwd=tmp_path)

    assert completed.returncode == 1
    assert "cohortsync init" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_unknown_profile_fails_clearly_without_printing_the_email(project_dir: Path) -> None:
    completed = run_script("profile", "email:nobody@example.com", "--project", str(project_dir),
                           cwd=project_dir)  # fmt: skip

    assert completed.returncode == 1
    assert "no profile" in completed.stderr
    assert "email" in completed.stderr
    assert "nobody@example.com" not in completed.stderr + completed.stdout
    assert "Traceback" not in completed.stderr


def test_bad_identifier_kind_fails_with_the_accepted_kinds(project_dir: Path) -> None:
    completed = run_script(
        "profile", "mail:a@b.com", "--project", str(project_dir), cwd=project_dir
    )

    assert completed.returncode == 1
    assert "email:" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize("user_id", ["[/vip]", "[vip]"])
def test_error_message_shows_identifiers_with_brackets_verbatim(
    project_dir: Path, user_id: str
) -> None:
    completed = run_script("profile", f"user_id:{user_id}", "--project", str(project_dir),
                           cwd=project_dir)  # fmt: skip

    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert user_id in completed.stderr


def test_ingesting_a_file_with_an_unknown_extension_fails_cleanly(project_dir: Path) -> None:
    (project_dir / "events.txt").write_text("{}\n", encoding="utf-8")

    completed = run_script("ingest", "events.txt", "--project", str(project_dir), cwd=project_dir)

    assert completed.returncode == 1
    assert ".jsonl" in completed.stderr
    assert "Traceback" not in completed.stderr


# --- demo --------------------------------------------------------------------------------------


def test_demo_builds_a_shop_into_a_new_project(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "demo"

    result = invoke(runner, "demo", "--profiles", "200", "--project", str(target))

    assert result.exit_code == 0, result.output
    load_project(target)
    stats = json_out(invoke(runner, "stats", "--project", str(target), "--json"))
    assert stats["profiles"]["total"] > 0
    assert stats["events"]["by_type"]["track"] > 0
    assert stats["events"]["by_type"]["identify"] > 0
    assert stats["identifiers"]["by_kind"]["email"] > 0
    assert stats["quarantined"]["total"] == 0
    assert "profiles" in result.stdout
    # The demo computed the example audiences: history holds them, buyers are suppressed.
    assert "cio_cart_abandon_6h" in result.stdout and "audience overlap" in result.stdout
    with Engine.open(target) as engine:
        overlaps = engine.overlaps()
    assert overlaps[("cio_recent_purch_7d_suppress", "cio_recent_purch_7d_suppress")] > 0
    assert overlaps[("cio_cart_abandon_6h", "cio_recent_purch_7d_suppress")] == 0
    assert overlaps[("cio_browse_abandon_24h", "cio_recent_purch_7d_suppress")] == 0
    # ...and synced them: the warehouse holds every member, Meta got a dry run only.
    assert "audiences → destinations" in result.stdout and "dry run" in result.stdout
    status = json_out(invoke(runner, "status", "--project", str(target), "--json"))
    lines = {(r["destination"], r["audience"]): r for r in status["routes"]}
    suppress = lines[("warehouse", "cio_recent_purch_7d_suppress")]
    assert suppress["desired"] == suppress["acknowledged"] > 0
    assert lines[("meta_ads", "cio_recent_purch_7d_suppress")]["acknowledged"] == 0
    requests = list((target / ".cohortsync" / "dry-run" / "meta_ads").glob("*.json"))
    assert requests
    sent = "".join(p.read_text() for p in requests)
    with Engine.open(target) as engine:
        emails = [m.email for m in engine.members("cio_recent_purch_7d_suppress") if m.email]
    assert emails and not any(email in sent for email in emails)  # hashed as they would leave
    assert any((target / "exports").rglob("snapshot.parquet"))


def _computed_as_of(target: Path) -> list[datetime]:
    with Engine.open(target) as engine:
        rows = engine.store.query("SELECT as_of FROM compute_runs")  # type: ignore[attr-defined]
    return [row[0] for row in rows]


def test_demo_computes_as_of_now(runner: CliRunner, tmp_path: Path) -> None:
    before = datetime.now(UTC)
    result = invoke(runner, "demo", "--profiles", "30", "--project", str(tmp_path / "now"))
    after = datetime.now(UTC)
    assert result.exit_code == 0, result.output
    *history, as_of = sorted(_computed_as_of(tmp_path / "now"))
    assert before <= as_of <= after  # the instant it ran, not a rounded one
    weekly = [as_of - timedelta(weeks=w) for w in range(DEMO_HISTORY_WEEKS, 0, -1)]
    assert history == weekly  # a weekly refresh's history before it, for the report
    assert (tmp_path / "now" / ".cohortsync" / "report.html").is_file()
    assert "/ui" in result.output  # where the dashboard is


def test_demo_at_builds_and_computes_the_shop_as_of_that_instant(
    runner: CliRunner, tmp_path: Path
) -> None:
    at = datetime(2026, 6, 1, 9, 30, 15, tzinfo=UTC)
    target = tmp_path / "at"
    result = invoke(
        runner, "demo", "--profiles", "30", "--at", "2026-06-01T09:30:15Z", "-p", str(target)
    )
    assert result.exit_code == 0, result.output
    assert sorted(_computed_as_of(target)) == [
        at - timedelta(weeks=w) for w in range(DEMO_HISTORY_WEEKS, -1, -1)
    ]
    with Engine.open(target) as engine:
        (last,) = engine.store.query('SELECT max("timestamp") FROM events')  # type: ignore[attr-defined]
    assert at - timedelta(days=1) < last[0] <= at
    future = invoke(runner, "demo", "--at", "2099-01-01T00:00:00Z", "-p", str(tmp_path / "later"))
    assert future.exit_code == 1
    assert "in the future" in str(future.exception)


def test_profile_table_shows_values_with_brackets_verbatim(
    runner: CliRunner, project_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "brackets.jsonl"
    message = {
        "type": "track",
        "messageId": "br-1",
        "userId": "u-br",
        "event": "[/promo] Clicked",
        "timestamp": "2026-05-01T10:00:00Z",
        "context": {"traits": {"segment": "[vip]"}},
    }
    path.write_text(json.dumps(message) + "\n", encoding="utf-8")
    assert invoke(runner, "ingest", str(path), "--project", str(project_dir)).exit_code == 0

    result = invoke(runner, "profile", "user_id:u-br", "--project", str(project_dir))

    assert result.exit_code == 0, repr(result.exception)
    assert "[/promo] Clicked" in result.stdout
    assert "[vip]" in result.stdout
