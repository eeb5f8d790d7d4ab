"""The in-memory identity graph always agrees with the `identities` table it mirrors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohortsync.engine import Engine
from cohortsync.store.duckdb_store import DuckDBStore
from tests.conftest import PROJECT_YAML

_USERS = st.sampled_from([f"u{i}" for i in range(4)])
_ANONS = st.sampled_from([f"a{i}" for i in range(4)])
_EMAILS = st.sampled_from([f"p{i}@example.com" for i in range(4)])


@st.composite
def _message(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["identify", "track", "alias"]))
    message: dict[str, Any] = {"type": kind, "anonymousId": draw(_ANONS)}
    if kind == "alias":
        return {"type": "alias", "previousId": draw(_ANONS), "userId": draw(_USERS)}
    if draw(st.booleans()):
        message["userId"] = draw(_USERS)
    if draw(st.booleans()):
        message["context"] = {"traits": {"email": draw(_EMAILS)}}
    if kind == "track":
        message["event"] = "Viewed"
    return message


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.lists(_message(), min_size=1, max_size=6), min_size=1, max_size=6))
def test_cached_owners_equal_the_identities_table_after_any_batches(
    tmp_path_factory: Any, batches: list[list[dict[str, Any]]]
) -> None:
    directory: Path = tmp_path_factory.mktemp("cache")
    (directory / "cohortsync.yml").write_text(PROJECT_YAML, encoding="utf-8")
    with Engine.open(directory) as engine:
        for batch in batches:
            engine.ingest_messages(batch)
        store = engine.store
        assert isinstance(store, DuckDBStore)
        table = {
            (k, v): p for k, v, p in store.query("SELECT kind, value, profile_id FROM identities")
        }
        cached, profiles = store.load_identity_state(table, ["user_id", "email"])
        assert cached == table
        for profile_id, state in profiles.items():
            held = {
                (k, v)
                for (k, v), owner in table.items()
                if owner == profile_id and k in ("user_id", "email")
            }
            assert {(k, v) for k, values in state.limited.items() for v in values} == held
        live = {
            p for (p,) in store.query("SELECT profile_id FROM profiles WHERE merged_into IS NULL")
        }
        assert set(table.values()) <= live
        # What lets a merge skip statements: who absorbed others, who has stored traits.
        cache = store._identities
        assert cache is not None
        absorbers = {p for (p,) in store.query("SELECT DISTINCT canonical_id FROM profile_aliases")}
        with_traits = {p for (p,) in store.query("SELECT DISTINCT profile_id FROM profile_traits")}
        for profile_id in live:
            assert cache.absorbed_any([profile_id]) == (profile_id in absorbers)
            assert cache.traits_of_any([profile_id]) == (profile_id in with_traits)
