"""The match rate `status` shows is what an ad platform can match: members with an identifier the
audience lets it use, refusals counted; a refusal names only the identifiers the audience allows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cohortsync.engine import Engine
from tests.sync.conftest import T0, H, person, track
from tests.sync.scripted import Remote

MATCH_YAML = """\
segments:
  buyers: {event: order_completed, within: 7d}
audiences:
  cio_buyers:
    segment: buyers
    identifiers: [email, phone]
    destinations: [exports, warehouse]
destinations:
  exports: {type: files, path: exports, platform: meta}
  warehouse: {type: warehouse, url: "duckdb:///warehouse.duckdb"}
"""


@pytest.fixture
def buyers(project_on_both: Path) -> Iterator[Engine]:
    """Four buyers with an email; a fifth known only by user id (logged in, never identified)."""
    settings = project_on_both / "cohortsync.yml"
    settings.write_text(settings.read_text(encoding="utf-8") + MATCH_YAML, encoding="utf-8")
    with Engine.open(project_on_both) as engine:
        engine.ingest_messages([person(n, T0 - H) for n in range(4)])
        engine.ingest_messages([track(n, "order_completed", T0) for n in range(5)])
        engine.compute(T0)
        yield engine


def test_a_member_the_audience_cannot_match_lowers_the_match_rate(buyers: Engine) -> None:
    before = {s.destination: s for s in buyers.sync_status()}
    assert before["exports"].match_rate == pytest.approx(4 / 5)  # user_id is not allowed
    assert before["warehouse"].match_rate == 1.0  # the team's own table takes any identifier
    buyers.sync()
    after = {s.destination: s for s in buyers.sync_status()}
    exports = after["exports"]
    assert (exports.desired, exports.acknowledged, exports.failed) == (5, 4, 1)
    assert exports.match_rate == pytest.approx(4 / 5)


def test_a_refusal_names_only_the_identifiers_the_audience_allows(buyers: Engine) -> None:
    buyers.sync()
    rows = buyers.store.query(  # type: ignore[attr-defined]
        "SELECT reason FROM destination_state WHERE status = 'rejected'"
    )
    assert len(rows) == 1
    (reason,) = rows[0]
    assert "email or phone" in reason
    assert "user_id" not in reason


def test_a_member_the_platform_refused_counts_against_the_match_rate(
    shop_on_both: Engine, remotes: dict[str, Remote]
) -> None:
    shop = shop_on_both
    shop.ingest_messages([track(n, "added_to_cart", T0) for n in range(10)])
    shop.compute(T0)
    members = sorted(m.profile_id for m in shop.members("cio_cart_1h") if not m.holdout)
    remotes["ads"].reject = {members[0]: "invalid identifier"}
    shop.sync(destination="ads")
    line = next(s for s in shop.sync_status() if s.destination == "ads")
    assert (line.desired, line.failed) == (len(members), 1)
    assert line.match_rate == pytest.approx((len(members) - 1) / len(members))
