"""Computing segments and audiences on a real store, and the membership history it records."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohortsync.audiences import compute as audience_compute
from cohortsync.audiences.compute import NameReport
from cohortsync.audiences.holdout import in_holdout
from cohortsync.engine import Engine
from cohortsync.errors import InputError
from cohortsync.events.timestamps import to_micros
from tests.audiences.conftest import D, H, T, identify, track, users


def history(engine: Engine, name: str) -> list[tuple[str, object, object]]:
    """(user_id, entered_at, exited_at) rows of one name, oldest first."""
    rows = engine.store.query(  # type: ignore[attr-defined]
        "SELECT i.value, m.entered_at, m.exited_at FROM memberships m "
        "JOIN identities i ON i.profile_id = m.profile_id AND i.kind = 'user_id' "
        "WHERE m.name = ? ORDER BY i.value, m.entered_at",
        [name],
    )
    return [(str(u), e, x) for u, e, x in rows]


def test_audience_is_segment_minus_exclusions_with_holdout_flagged(shop: Engine) -> None:
    shop.ingest_messages(
        [
            *(track(f"c{i}", "Added To Cart", T - 2 * H) for i in range(20)),
            track("c0", "Order Completed", T - 1 * H),  # converted: leaves both
            track("c1", "Order Completed", T - 3 * D),  # bought last week: excluded
            identify("c2", T - 5 * D, role="staff"),  # staff: excluded
        ]
    )
    report = shop.compute(T)
    segment = report.row("cart_abandon_6h", "segment")
    audience = report.row("cio_cart_abandon_6h")
    assert (segment.size, segment.entered, segment.exited) == (19, 19, 0)
    assert (audience.kind, audience.size, audience.entered) == ("audience", 17, 17)
    members = shop.members("cio_cart_abandon_6h")
    assert users(members) == {f"c{i}" for i in range(3, 20)}
    assert all(m.holdout == in_holdout("cio_cart_abandon_6h", m.profile_id, 50) for m in members)
    assert audience.holdout == sum(1 for m in members if m.holdout)
    assert 0 < audience.holdout < 17
    assert all(m.holdout is None for m in shop.members("cart_abandon_6h"))


def test_computing_twice_at_the_same_instant_changes_nothing(shop: Engine) -> None:
    shop.ingest_messages([track(f"u{i}", "Added To Cart", T - 1 * H) for i in range(5)])
    first = shop.compute(T)
    before = shop.store.query("SELECT * FROM memberships ORDER BY ALL")  # type: ignore[attr-defined]
    again = shop.compute(T)
    assert [(r.entered, r.exited) for r in again.rows] == [(0, 0)] * len(again.rows)
    assert [r.size for r in again.rows] == [r.size for r in first.rows]
    assert shop.store.query("SELECT * FROM memberships ORDER BY ALL") == before  # type: ignore[attr-defined]
    runs = shop.store.query("SELECT run_id, as_of FROM compute_runs ORDER BY run_id")  # type: ignore[attr-defined]
    assert [r[0] for r in runs] == [1, 2] and runs[0][1] == runs[1][1] == T


def test_a_later_instant_records_the_exit_and_a_re_entry_is_a_new_row(shop: Engine) -> None:
    shop.ingest_messages([track("ann", "Added To Cart", T - 3 * H)])
    assert shop.compute(T).row("cio_cart_abandon_6h").entered == 1
    later = shop.compute(T + 7 * H)
    assert later.row("cio_cart_abandon_6h").exited == 1
    assert later.row("cart_abandon_6h").exited == 1
    assert history(shop, "cio_cart_abandon_6h") == [("ann", T, T + 7 * H)]
    assert shop.members("cio_cart_abandon_6h") == []

    shop.ingest_messages([track("ann", "Added To Cart", T + 7 * H + H / 2)])
    back = shop.compute(T + 8 * H)
    assert back.row("cio_cart_abandon_6h").entered == 1
    assert history(shop, "cio_cart_abandon_6h") == [
        ("ann", T, T + 7 * H),
        ("ann", T + 8 * H, None),
    ]


def test_members_at_an_earlier_instant_replay_history(shop: Engine) -> None:
    shop.ingest_messages(
        [track("ann", "Added To Cart", T - 3 * H), track("bob", "Added To Cart", T + 2 * H)]
    )
    shop.compute(T)
    shop.compute(T + 2 * H)
    shop.compute(T + 7 * H)  # ann aged out; bob still in
    name = "cio_cart_abandon_6h"
    assert users(shop.members(name)) == {"bob"}
    assert users(shop.members(name, at=T - 1 * H)) == set()  # before the first compute
    assert users(shop.members(name, at=T)) == {"ann"}
    assert users(shop.members(name, at=T + 3 * H)) == {"ann", "bob"}
    assert users(shop.members(name, at=T + 7 * H)) == {"bob"}


def test_only_events_at_or_before_the_instant_count(shop: Engine) -> None:
    shop.ingest_messages([track("ann", "Product Viewed", T + 1 * H)])
    assert shop.compute(T).row("cio_browse_1d").size == 0
    assert shop.compute(T + 1 * H).row("cio_browse_1d").entered == 1


def test_recording_before_the_latest_run_is_refused(shop: Engine) -> None:
    shop.compute(T)
    with pytest.raises(InputError, match="members NAME --at"):
        audience_compute.compute(shop.store, shop.segments, to_micros(T - 1 * H))


def test_members_carry_first_identifiers_of_each_kind(shop: Engine) -> None:
    shop.ingest_messages(
        [
            identify("ann", T - 2 * D, email="Ann@Example.com", phone="(415) 555-0100"),
            track("ann", "Product Viewed", T - 1 * H),
            track("bob", "Product Viewed", T - 1 * H),
        ]
    )
    shop.compute(T)
    by_user = {m.user_id: m for m in shop.members("browsed_1d")}
    assert by_user["ann"].email == "ann@example.com"
    assert by_user["ann"].phone == "+14155550100"
    assert by_user["bob"].email is None and by_user["bob"].phone is None


def test_preview_counts_overlaps_and_explains_without_recording(shop: Engine) -> None:
    shop.ingest_messages(
        [
            track("ann", "Added To Cart", T - 1 * H),
            track("ann", "Product Viewed", T - 1 * H),
            track("bob", "Product Viewed", T - 1 * H),
        ]
    )
    preview = shop.preview("cio_browse_1d", at=T)
    assert (preview.kind, preview.size, preview.holdout) == ("audience", 2, 0)
    assert {m.user_id for m in preview.sample} == {"ann", "bob"}
    assert preview.overlap == {"cio_cart_abandon_6h": 1}
    assert "browsed_1d" in preview.explanation
    segment = shop.preview("cart_abandon_6h", at=T)
    assert segment.kind == "segment" and segment.size == 1
    assert segment.overlap == {"cio_cart_abandon_6h": 1, "cio_browse_1d": 1}
    assert shop.store.query("SELECT count(*) FROM memberships") == [(0,)]  # type: ignore[attr-defined]


def test_unknown_name_suggests_close_names(shop: Engine) -> None:
    with pytest.raises(InputError, match="did you mean cio_cart_abandon_6h"):
        shop.members("cio_cart_abandon")
    with pytest.raises(InputError, match="no segment or audience is named 'zzz'"):
        shop.preview("zzz")


def test_a_segment_removed_from_the_project_has_its_members_exit(audience_dir: Path) -> None:
    with Engine.open(audience_dir) as engine:
        engine.ingest_messages([track("ann", "Product Viewed", T - 1 * H)])
        engine.compute(T)
    text = (audience_dir / "cohortsync.yml").read_text(encoding="utf-8")
    text = text.replace(
        "  cio_browse_1d:\n    segment: browsed_1d\n    exclude: [recent_purch_7d]\n", ""
    )
    (audience_dir / "cohortsync.yml").write_text(text, encoding="utf-8")
    with Engine.open(audience_dir) as engine:
        report = engine.compute(T + 1 * H)
        assert report.row("cio_browse_1d", "audience") == NameReport(
            "audience", "cio_browse_1d", 0, 0, 1
        )
        assert history(engine, "cio_browse_1d") == [("ann", T, T + 1 * H)]
