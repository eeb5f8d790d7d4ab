"""`cohortsync init`: write a starter project that runs as is.

The starter is the example project of a D2C retention team (`cohortsync/demo/project.yml`,
shipped in the wheel): identity, a web source, computed traits, segments and audiences written
against the demo shop's events. Only the write key changes from one project to the next.
"""

from __future__ import annotations

import secrets
from importlib.resources import files
from pathlib import Path

from cohortsync.config.loader import PROJECT_FILE
from cohortsync.errors import InputError

WRITE_KEY_PLACEHOLDER = "__WRITE_KEY__"


def template_text() -> str:
    """The example project file as shipped, with the write-key placeholder."""
    return files("cohortsync.demo").joinpath("project.yml").read_text(encoding="utf-8")


def render_template(write_key: str) -> str:
    """The example project file with `write_key` as the web source's default key."""
    return template_text().replace(WRITE_KEY_PLACEHOLDER, write_key)


def scaffold_project(directory: Path, *, force: bool = False) -> Path:
    """Create `directory/cohortsync.yml` with a fresh write key; refuse to overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / PROJECT_FILE
    if target.exists() and not force:
        raise InputError(f"{target} already exists: edit it, or pass --force to overwrite it")
    target.write_text(render_template("wk_" + secrets.token_hex(12)), encoding="utf-8")
    return target
