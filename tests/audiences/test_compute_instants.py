"""Which computes are recorded: an instant before the history or in the future is evaluated only.

Every test holds on a DuckDB store and on a Postgres one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from cohortsync.engine import Engine
from cohortsync.events.timestamps import to_micros
from cohortsync.store.base import HistoryAheadError
from cohortsync.sync.memberships import record_compute
from tests.audiences.conftest import AUDIENCE_YAML, H, T, track

CART = "cio_cart_abandon_6h"


@pytest.fixture
def shop(project_on_both: Path) -> Iterator[Engine]:
    """The audience project on both engines; ann abandoned a cart 3 h before T."""
    settings = project_on_both / "cohortsync.yml"
    settings.write_text(settings.read_text(encoding="utf-8") + AUDIENCE_YAML, encoding="utf-8")
    with Engine.open(project_on_both) as engine:
        engine.ingest_messages([track("ann", "Added To Cart", T - 3 * H)])
        yield engine


def recorded(engine: Engine) -> tuple[object, ...]:
    """Everything a compute records: its runs, the membership history and the outbox."""
    return tuple(
        engine.store.query(sql)  # type: ignore[attr-defined]
        for sql in (
            "SELECT run_id, as_of FROM compute_runs ORDER BY run_id",
            "SELECT kind, name, profile_id, entered_at, exited_at FROM memberships "
            "ORDER BY kind, name, profile_id, entered_at",
            "SELECT count(*) FROM outbox",
        )
    )


def test_a_compute_before_the_recorded_history_is_evaluated_not_recorded(shop: Engine) -> None:
    shop.compute(T + 7 * H)  # ann's cart has aged out by then
    before = recorded(shop)
    past = shop.compute(T)
    assert not past.recorded and past.run_id is None
    assert past.reason is not None and past.reason.startswith("before the recorded history")
    assert past.as_of == T
    assert past.row(CART).size == 1  # as of T, ann is in
    assert (past.row(CART).entered, past.row(CART).exited) == (None, None)
    assert recorded(shop) == before
    assert shop.members(CART) == []  # the recorded present is untouched


def test_a_future_compute_is_only_evaluated_and_a_plain_one_then_records(shop: Engine) -> None:
    future = datetime.now(UTC) + timedelta(days=2)
    ahead = shop.compute(future)
    assert not ahead.recorded and ahead.run_id is None
    assert ahead.reason == "in the future: add --record-future to record"
    assert recorded(shop)[0] == []
    now = shop.compute()  # the history was left where it was: now is still after it
    assert now.recorded and now.run_id is not None


def test_a_recorded_future_makes_a_plain_compute_an_evaluation(shop: Engine) -> None:
    future = datetime.now(UTC) + timedelta(days=2)
    ahead = shop.compute(future, record_future=True)
    assert ahead.recorded and ahead.run_id is not None
    before = recorded(shop)
    plain = shop.compute()  # does not fail: the history runs past now
    assert not plain.recorded
    assert plain.reason is not None and plain.reason.startswith("before the recorded history")
    assert future.isoformat() in plain.reason
    assert recorded(shop) == before


def test_recording_behind_the_history_is_refused_by_the_store(shop: Engine) -> None:
    """The history check holds in the recording transaction too, where no race can pass it."""
    shop.compute(T + 7 * H)
    nobody = pa.table(
        {
            "kind": pa.array([], pa.string()),
            "name": pa.array([], pa.string()),
            "profile_id": pa.array([], pa.string()),
            "holdout": pa.array([], pa.bool_()),
        }
    )
    before = recorded(shop)
    with pytest.raises(HistoryAheadError):
        record_compute(shop.store.sql, nobody, to_micros(T), 0.0)
    assert recorded(shop) == before  # nobody exited at T
