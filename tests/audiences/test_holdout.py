"""The holdout split: deterministic, and close to the configured rate."""

from __future__ import annotations

import hashlib

import duckdb
import psycopg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp

from cohortsync.audiences.holdout import bucket, bucket_sql, holdout_flags, holdout_sql, in_holdout
from tests.postgres import require_postgres


def test_bucket_follows_the_documented_formula() -> None:
    digest = hashlib.sha256(b"cio_x:p-42").hexdigest()
    assert bucket("cio_x", "p-42") == int(digest[:15], 16) % 10_000


def test_holdout_rate_is_close_to_the_percent_and_stable() -> None:
    ids = [f"profile-{i}" for i in range(2_000)]
    first = holdout_flags("cio_cart_abandon_6h", ids, 10)
    assert 0.08 * 2_000 <= sum(first) <= 0.12 * 2_000
    assert holdout_flags("cio_cart_abandon_6h", ids, 10) == first
    assert first == [in_holdout("cio_cart_abandon_6h", p, 10) for p in ids]


def test_holdout_depends_on_the_audience_and_grows_with_the_percent() -> None:
    ids = [f"profile-{i}" for i in range(2_000)]
    a = holdout_flags("a", ids, 10)
    assert a != holdout_flags("b", ids, 10)
    wider = holdout_flags("a", ids, 20)
    assert all(w for h, w in zip(a, wider, strict=True) if h)  # 10% ⊂ 20%
    assert not any(holdout_flags("a", ids, None))


# -- the same split computed in the engine (what a batch compute uses) ------------------------

NAMES = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)
PERCENTS = st.one_of(
    st.none(),
    st.sampled_from([0, 0.01, 10, 12.5, 33.33, 50, 99.99, 100]),
    st.floats(min_value=0, max_value=100, allow_nan=False),
)


def _duckdb_flags(
    audience: str, ids: list[str], percent: float | None
) -> list[tuple[str, int, bool]]:
    con = duckdb.connect()
    con.register("ids", pa.table({"profile_id": pa.array(ids, pa.string())}))
    pid = exp.column("profile_id", quoted=True)
    bucket_ = bucket_sql(audience, pid, "duckdb").sql("duckdb")
    held = holdout_sql(audience, pid.copy(), percent, "duckdb").sql("duckdb")
    rows = con.execute(f"SELECT profile_id, {bucket_}, {held} FROM ids").fetchall()
    con.close()
    return [(str(p), int(b), bool(h)) for p, b, h in rows]


def _postgres_flags(
    url: str, audience: str, ids: list[str], percent: float | None
) -> list[tuple[str, int, bool]]:
    pid = exp.column("profile_id", quoted=True)
    # The expressions hold `%` (modulo), which a query with parameters writes `%%`.
    bucket_ = bucket_sql(audience, pid, "postgres").sql("postgres").replace("%", "%%")
    held = holdout_sql(audience, pid.copy(), percent, "postgres").sql("postgres").replace("%", "%%")
    sql = f"SELECT profile_id, {bucket_}, {held} FROM unnest(%s::text[]) AS t(profile_id)"
    with psycopg.connect(url) as conn:
        rows = conn.execute(sql, (ids,)).fetchall()  # type: ignore[arg-type]
    return [(str(p), int(b), bool(h)) for p, b, h in rows]


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(audience=NAMES, ids=st.lists(NAMES, min_size=1, max_size=30), percent=PERCENTS)
def test_the_engine_splits_exactly_as_python_does(
    engine: str, audience: str, ids: list[str], percent: float | None
) -> None:
    if engine == "postgres":
        found = _postgres_flags(require_postgres(), audience, ids, percent)
    else:
        found = _duckdb_flags(audience, ids, percent)
    expected = [(p, bucket(audience, p), in_holdout(audience, p, percent)) for p in ids]
    assert sorted(found) == sorted(expected)
