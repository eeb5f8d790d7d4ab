"""Report projects on a DuckDB file or a fresh Postgres schema, for the report's tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import PROJECT_YAML
from tests.postgres import postgres_schema


@contextmanager
def report_project(root: Path, engine: str, yaml: str) -> Iterator[Path]:
    """`root` holding cohortsync.yml (the common header + `yaml`) with its store on `engine`."""
    if engine == "duckdb":
        (root / "cohortsync.yml").write_text(PROJECT_YAML + yaml, encoding="utf-8")
        yield root
        return
    with postgres_schema() as url:
        text = PROJECT_YAML.replace("store: .cohortsync/store.duckdb", f"store: {url}")
        (root / "cohortsync.yml").write_text(text + yaml, encoding="utf-8")
        yield root
