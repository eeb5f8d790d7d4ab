"""What a project says about lint: severities per code, per-audience ignores, and unknown
codes named with their line; the command's exit code and JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cohortsync.cli import app
from cohortsync.engine import Engine
from cohortsync.errors import ConfigError
from tests.ops.mistakes import mistakes_yaml, shoppers

NOWHERE = "http://127.0.0.1:9"  # the Meta audience is never synced here: nothing is read back


@pytest.fixture(scope="module")
def computed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mistakes project's store, computed once for the module."""
    root = tmp_path_factory.mktemp("mistakes")
    (root / "cohortsync.yml").write_text(mistakes_yaml(NOWHERE, "EAAtoken"), encoding="utf-8")
    with Engine.open(root) as engine:
        engine.ingest_messages(shoppers())
        engine.compute()
    return root


@pytest.fixture
def project(computed: Path) -> Iterator[Path]:
    """The computed project; each test edits its file, restored afterwards."""
    yield computed
    (computed / "cohortsync.yml").write_text(mistakes_yaml(NOWHERE, "EAAtoken"), encoding="utf-8")


def edit(project: Path, old: str, new: str) -> None:
    path = project / "cohortsync.yml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def run(project: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["lint", "--project", str(project), *args])


def findings(project: Path) -> dict[str, str]:
    """Code → severity of every finding."""
    with Engine.open(project) as engine:
        return {r.finding.code: r.severity for r in engine.lint().findings}


def test_json_lists_every_finding_and_errors_exit_1(project: Path) -> None:
    result = run(project, "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert set(report) == {"findings", "errors", "warnings", "measured", "as_of", "notes"}
    first = report["findings"][0]
    assert set(first) == {
        "code", "severity", "audience", "destination", "message", "fix", "figure",
    }  # fmt: skip
    assert first["code"] == "CS101" and first["severity"] == "error"
    assert first["audience"] == "aud_retarget"
    assert report["errors"] == sum(f["severity"] == "error" for f in report["findings"]) > 0


def test_severity_config_changes_and_silences_codes(project: Path) -> None:
    default = findings(project)
    assert default["CS111"] == "warning" and "CS110" in default
    edit(project, "  max_anonymous_share: 0.1\n", "  max_anonymous_share: 0.1\n"
         "  severity: {CS111: error, CS110: off}\n")  # fmt: skip
    changed = findings(project)
    assert changed["CS111"] == "error"
    assert "CS110" not in changed
    assert set(default) - set(changed) == {"CS110"}


def test_only_warnings_left_exits_0(project: Path) -> None:
    errors = [code for code, severity in findings(project).items() if severity == "error"]
    levels = ", ".join(f"{code}: warning" for code in errors)
    edit(project, "  max_anonymous_share: 0.1\n",
         f"  max_anonymous_share: 0.1\n  severity: {{{levels}}}\n")  # fmt: skip
    result = run(project)
    assert result.exit_code == 0, result.stdout
    said = " ".join(result.stdout.split())
    assert "warning CS101 aud_retarget" in said
    assert "0 error(s), 12 warning(s)" in said  # all but CS113: nothing synced


def test_an_audience_ignores_a_code(project: Path) -> None:
    edit(project, "    description: Carted in the last day.\n",
         "    description: Carted in the last day.\n    lint: {ignore: [CS101]}\n")  # fmt: skip
    found = findings(project)
    assert "CS101" not in found
    assert "CS103" in found  # the destination-wide finding names no audience: still reported


def test_threshold_settings_are_read(project: Path) -> None:
    assert "CS103" in findings(project)
    edit(project, "  max_audiences_per_destination: 6\n", "  max_audiences_per_destination: 7\n")
    assert "CS103" not in findings(project)


def test_unknown_codes_are_errors_with_their_line(project: Path) -> None:
    edit(project, "  max_anonymous_share: 0.1\n",
         "  max_anonymous_share: 0.1\n  severity:\n    CS999: off\n")  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        findings(project)
    lines = (project / "cohortsync.yml").read_text(encoding="utf-8").splitlines()
    assert caught.value.line is not None and "CS999" in lines[caught.value.line - 1]
    assert "unknown code 'CS999': use one of CS101" in str(caught.value)


def test_unknown_ignored_code_names_the_audience(project: Path) -> None:
    edit(project, "    description: Carted in the last day.\n",
         "    description: Carted in the last day.\n    lint: {ignore: [CS01]}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="aud_retarget' ignores unknown lint code 'CS01'"):
        findings(project)
