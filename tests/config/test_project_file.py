"""The project file `cohortsync.yml`: what loads, and errors that point at `file:line`."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohortsync.config.loader import PROJECT_FILE, load_project
from cohortsync.config.models import IdentityConfig, SourceConfig
from cohortsync.config.scaffold import scaffold_project
from cohortsync.errors import ConfigError, InputError

VALID = """\
# a comment
store: data/store.duckdb
identity:
  primary: email
  secondary: [phone]
  default_region: GB
  limits: {user_id: 1, email: 2}
sources:
  web:
    write_key: wk_web_12345678
  backend:
    write_key: wk_backend_1234
"""


@pytest.fixture(autouse=True)
def _no_project_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHORTSYNC_PROJECT", raising=False)


def write(directory: Path, text: str) -> Path:
    (directory / PROJECT_FILE).write_text(text, encoding="utf-8")
    return directory


def config_error(directory: Path, monkeypatch: pytest.MonkeyPatch) -> ConfigError:
    """Load from inside the project folder, so errors name `cohortsync.yml` as a user sees it."""
    monkeypatch.chdir(directory)
    with pytest.raises(ConfigError) as caught:
        load_project(directory)
    return caught.value


def test_valid_project_file_loads(tmp_path: Path) -> None:
    loaded = load_project(write(tmp_path, VALID))

    project = loaded.project
    assert project.identity == IdentityConfig(
        primary="email",
        secondary=("phone",),
        default_region="GB",
        limits={"user_id": 1, "email": 2},
    )
    assert project.sources == {
        "web": SourceConfig(write_key="wk_web_12345678"),
        "backend": SourceConfig(write_key="wk_backend_1234"),
    }
    assert project.source_for_key("wk_backend_1234") == "backend"
    assert project.source_for_key("wk_unknown_0000") is None
    assert loaded.root == tmp_path.resolve()
    assert loaded.line_of("sources", "backend", "write_key") == 12


def test_empty_project_file_uses_defaults(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, "")).project
    assert project.identity.primary == "email"
    assert project.identity.default_region == "US"
    assert project.identity.limit_for("user_id") == 1
    assert project.identity.limit_for("email") == 1
    assert project.identity.limit_for("phone") is None
    assert project.sources == {}


def test_env_variable_is_interpolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CS_TEST_WEB_KEY", "wk_from_env_123")
    monkeypatch.setenv("CS_TEST_DIR", "stores")
    text = (
        "store: ${CS_TEST_DIR}/main.duckdb\nsources:\n  web:\n    write_key: ${CS_TEST_WEB_KEY}\n"
    )

    loaded = load_project(write(tmp_path, text))

    assert loaded.project.sources["web"].write_key == "wk_from_env_123"
    assert loaded.project.store == "stores/main.duckdb"


def test_env_default_is_used_when_variable_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CS_TEST_UNSET_KEY", raising=False)
    text = "sources:\n  web:\n    write_key: ${CS_TEST_UNSET_KEY:-wk_default_123}\n"

    project = load_project(write(tmp_path, text)).project

    assert project.sources["web"].write_key == "wk_default_123"


def test_env_variable_wins_over_its_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CS_TEST_SET_KEY", "wk_from_env_456")
    text = "sources:\n  web:\n    write_key: ${CS_TEST_SET_KEY:-wk_default_123}\n"

    project = load_project(write(tmp_path, text)).project

    assert project.sources["web"].write_key == "wk_from_env_456"


def test_missing_env_variable_is_an_error_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CS_TEST_MISSING_KEY", raising=False)
    text = "store: x.duckdb\nsources:\n  web:\n    write_key: ${CS_TEST_MISSING_KEY}\n"

    error = config_error(write(tmp_path, text), monkeypatch)

    assert str(error).startswith("cohortsync.yml:4: ")
    assert "CS_TEST_MISSING_KEY" in str(error)
    assert error.line == 4


def test_unknown_top_level_key_names_the_key_its_line_and_the_allowed_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "store: x.duckdb\nidentity:\n  primary: email\nsegmnets: {}\n"

    error = config_error(write(tmp_path, text), monkeypatch)

    message = str(error)
    assert message.startswith("cohortsync.yml:4: ")
    assert "'segmnets'" in message
    for allowed in ("store", "identity", "sources", "segments", "destinations"):
        assert allowed in message.split("segmnets", 1)[1]


def test_unknown_key_inside_identity_names_the_key_and_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "store: x.duckdb\nidentity:\n  primary: email\n  secundary: [phone]\n"

    message = str(config_error(write(tmp_path, text), monkeypatch))

    assert message.startswith("cohortsync.yml:4: ")
    assert "'secundary'" in message
    assert "identity" in message
    for allowed in ("primary", "secondary", "default_region", "limits"):
        assert allowed in message


def test_unknown_key_inside_a_source_names_the_key_and_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "sources:\n  web:\n    write_key: wk_web_12345678\n    writekey: oops\n"

    message = str(config_error(write(tmp_path, text), monkeypatch))

    assert message.startswith("cohortsync.yml:4: ")
    assert "'writekey'" in message
    assert "sources.web" in message
    assert "write_key" in message.split("writekey", 1)[1]


@pytest.mark.parametrize("region", ["usa", "us", "U1", "''"])
def test_bad_default_region_is_an_error_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, region: str
) -> None:
    text = f"identity:\n  primary: email\n  default_region: {region}\n"

    message = str(config_error(write(tmp_path, text), monkeypatch))

    assert message.startswith("cohortsync.yml:3: ")
    assert "default_region" in message
    assert "two-letter" in message


def test_short_write_key_is_an_error_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "sources:\n  web:\n    write_key: short\n"

    message = str(config_error(write(tmp_path, text), monkeypatch))

    assert message.startswith("cohortsync.yml:3: ")
    assert "write_key" in message


def test_two_sources_sharing_a_write_key_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        "sources:\n  web:\n    write_key: wk_same_123456\n  app:\n    write_key: wk_same_123456\n"
    )

    message = str(config_error(write(tmp_path, text), monkeypatch))

    assert message.startswith("cohortsync.yml:1: ")
    assert "write_key" in message


def test_invalid_yaml_is_an_error_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "store: x.duckdb\nidentity:\n\tprimary: email\n"

    error = config_error(write(tmp_path, text), monkeypatch)

    assert str(error).startswith("cohortsync.yml:3: ")
    assert "YAML" in str(error)


def test_project_file_that_is_not_a_mapping_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = str(config_error(write(tmp_path, "- store\n- identity\n"), monkeypatch))
    assert message.startswith("cohortsync.yml:1: ")


def test_error_outside_the_project_folder_still_names_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    write(project, "store: x.duckdb\nbogus: 1\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    with pytest.raises(ConfigError) as caught:
        load_project(project)

    assert f"{PROJECT_FILE}:2: " in str(caught.value)


def test_relative_store_path_is_taken_from_the_project_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    write(project, "store: data/store.duckdb\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    loaded = load_project(project)

    assert loaded.store_path() == project.resolve() / "data" / "store.duckdb"


def test_absolute_store_path_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "store.duckdb"
    loaded = load_project(write(tmp_path, f"store: {target}\n"))
    assert loaded.store_path() == target


def test_project_folder_comes_from_the_environment_when_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, VALID)
    monkeypatch.setenv("COHORTSYNC_PROJECT", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)

    assert load_project().root == tmp_path.resolve()


def test_missing_project_file_suggests_cohortsync_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)

    assert "cohortsync init" in str(caught.value)
    assert PROJECT_FILE in str(caught.value)


def test_scaffolded_project_loads_and_is_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COHORTSYNC_WEB_WRITE_KEY", raising=False)
    target = scaffold_project(tmp_path / "new")
    first = target.read_text(encoding="utf-8")

    loaded = load_project(tmp_path / "new")
    assert loaded.project.sources["web"].write_key.startswith("wk_")
    with pytest.raises(InputError, match="--force"):
        scaffold_project(tmp_path / "new")
    assert target.read_text(encoding="utf-8") == first

    scaffold_project(tmp_path / "new", force=True)
    assert target.read_text(encoding="utf-8") != first
