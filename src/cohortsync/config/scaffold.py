"""`cohortsync init`: write a starter project that runs as is."""

from __future__ import annotations

import secrets
from pathlib import Path

from cohortsync.config.loader import PROJECT_FILE
from cohortsync.errors import InputError

TEMPLATE = """\
# cohortsync project file. Reference: README.md, "The project file".
# Values may use ${{ENV_VAR}} or ${{ENV_VAR:-default}}.

# Where events, profiles and memberships live (relative to this file).
store: .cohortsync/store.duckdb

# One person = one profile. Identifiers are normalised (email lower-cased,
# phone to E.164 using default_region) before they are matched.
identity:
  primary: email
  secondary: [phone]
  default_region: US
  limits: {{user_id: 1, email: 1}}   # a shared device never merges two customers

# Ingest sources: send Segment-spec events to /v1/* with this write key
# (HTTP Basic, write key as user name, empty password).
sources:
  web:
    write_key: ${{COHORTSYNC_WEB_WRITE_KEY:-{write_key}}}

# Computed traits, segments, audiences, destinations and conversions follow here.
traits: {{}}
segments: {{}}
audiences: {{}}
destinations: {{}}
conversions: []
"""


def scaffold_project(directory: Path, *, force: bool = False) -> Path:
    """Create `directory/cohortsync.yml` with a fresh write key; refuse to overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / PROJECT_FILE
    if target.exists() and not force:
        raise InputError(f"{target} already exists: edit it, or pass --force to overwrite it")
    target.write_text(TEMPLATE.format(write_key="wk_" + secrets.token_hex(12)), encoding="utf-8")
    return target
