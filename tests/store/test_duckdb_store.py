"""The DuckDB store as a user meets it: data survives reopening; batch size changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import cohortsync.engine as engine_module
from cohortsync.engine import Engine
from cohortsync.store import duckdb_schema, postgres_schema
from tests.conftest import PROJECT_YAML


def _message(kind: str, mid: str, minute: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "messageId": mid,
        "timestamp": f"2026-05-01T10:{minute:02d}:00Z",
        **fields,
    }


def history() -> list[dict[str, Any]]:
    """Time-ordered messages with merges, a shared device, an alias and a bad identifier."""
    return [
        _message("track", "s-1", 1, anonymousId="x1", event="Viewed"),
        _message("identify", "s-2", 2, userId="g1", traits={"email": "gil@example.com"}),
        _message("identify", "s-3", 3, anonymousId="x1", traits={"email": "GIL@example.com"}),
        _message(
            "identify",
            "s-4",
            4,
            userId="g1",
            traits={"phone": "415 555 2671", "email": "bad@", "plan": "pro"},
        ),
        _message("identify", "s-5", 5, anonymousId="x1", userId="g2"),
        _message("track", "s-6", 6, anonymousId="x2", event="Viewed"),
        _message("alias", "s-7", 7, previousId="x2", userId="g1"),
        _message("track", "s-8", 8),  # no ids: quarantined
    ]


def snapshot(engine: Engine) -> dict[str, Any]:
    query = engine.store.query  # type: ignore[attr-defined]
    return {
        "stats": engine.stats(),
        "identities": query("SELECT kind, value, profile_id FROM identities ORDER BY 1, 2"),
        "traits": query("SELECT profile_id, name, value FROM profile_traits ORDER BY 1, 2"),
        "events": query("SELECT message_id, canonical_profile_id FROM profile_events ORDER BY 1"),
        "profiles": query("SELECT profile_id, merged_into FROM profiles ORDER BY 1"),
        "seen": query(
            'SELECT canonical_profile_id, min("timestamp"), max("timestamp") '
            "FROM profile_events GROUP BY 1 ORDER BY 1"
        ),
        "merges": query("SELECT from_profile, into_profile, message_id FROM merges ORDER BY 3"),
    }


def open_project(directory: Path) -> Engine:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cohortsync.yml").write_text(PROJECT_YAML, encoding="utf-8")
    return Engine.open(directory)


def test_everything_survives_closing_and_reopening_the_project(project_on_both: Path) -> None:
    with Engine.open(project_on_both) as first:
        first.ingest_messages(history())
        before = snapshot(first)

    with Engine.open(project_on_both) as reopened:
        assert snapshot(reopened) == before
        assert reopened.find_profile("email:gil@example.com").traits["plan"] == "pro"


def test_reopening_applies_each_migration_once(project_on_both: Path) -> None:
    with Engine.open(project_on_both) as first:
        postgres = first.store.dialect == "postgres"
        latest = postgres_schema.LATEST_VERSION if postgres else duckdb_schema.LATEST_VERSION
        assert first.store.migrate() == latest
    with Engine.open(project_on_both) as again:
        rows = again.store.query(  # type: ignore[attr-defined]
            "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version"
        )
    assert rows == [(version, 1) for version in range(1, latest + 1)]


def test_store_file_is_created_where_the_project_file_says(project_dir: Path) -> None:
    with Engine.open(project_dir) as engine:
        engine.ingest_messages(history()[:1])
    assert (project_dir / ".cohortsync" / "store.duckdb").is_file()


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_small_batches_give_the_same_profiles_as_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    with open_project(tmp_path / "whole") as whole:
        whole.ingest_messages(history())
        expected = snapshot(whole)

    monkeypatch.setattr(engine_module, "FILE_BATCH", batch)
    with open_project(tmp_path / "split") as split:
        result = split.ingest_messages(history())
        assert result.stored == len(history()) - 1
        assert result.quarantined == 1
        actual = snapshot(split)

    assert actual == expected


def test_reloading_the_demo_shop_adds_nothing(project_on_both: Path) -> None:
    pytest.importorskip("cohortsync.demo.shop")
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)

    with Engine.open(project_on_both) as engine:
        first = engine.load_demo(60, seed=3, now=now)
        before = snapshot(engine)
        again = engine.load_demo(60, seed=3, now=now)
        after = snapshot(engine)

    assert first.stored > 0
    assert again.stored == 0
    assert again.duplicates == first.stored
    assert after == before


def test_query_binds_parameters_instead_of_splicing_them(engine: Engine) -> None:
    engine.ingest_messages(history())
    hostile = "x' OR '1'='1"
    rows = engine.store.query(  # type: ignore[attr-defined]
        "SELECT count(*) FROM identities WHERE value = ?", [hostile]
    )
    assert rows == [(0,)]
