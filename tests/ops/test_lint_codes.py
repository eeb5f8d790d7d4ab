"""A project committing each lint mistake once gets each code exactly once, on both stores;
renaming its Meta audience on the platform is the drift."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest

from cohortsync.engine import Engine, LintReport
from cohortsync.ops.lint_codes import RULES
from tests.fakes.meta import MetaFake
from tests.ops.mistakes import META_ACCOUNT, mistakes_yaml, shoppers


def build(project: Path, fake: MetaFake, store: str | None = None) -> Engine:
    """The mistakes project with its shoppers computed and `aud_small` synced to the fake."""
    (project / "cohortsync.yml").write_text(
        mistakes_yaml(fake.base_url, fake.token, store), encoding="utf-8"
    )
    engine = Engine.open(project)
    engine.ingest_messages(shoppers())
    engine.compute()
    with httpx.Client() as http:
        engine.sync(destination="meta_live", http=http)
    return engine


def codes(report: LintReport) -> Counter[str]:
    return Counter(r.finding.code for r in report.findings)


@pytest.fixture
def fake() -> MetaFake:
    return MetaFake(ad_account_id=META_ACCOUNT)


def test_each_mistake_gets_its_code_exactly_once(
    tmp_path: Path, store_location: str, fake: MetaFake
) -> None:
    with fake.serving():
        engine = build(tmp_path, fake, store_location)
        with engine:
            assert "aud_small" in fake.audiences()
            fake.edit_audience("aud_small", new_name="Small group (paid team)")
            report = engine.lint()
    assert codes(report) == Counter(dict.fromkeys(RULES, 1)), [
        (r.finding.code, r.finding.message) for r in report.findings
    ]
    by_code = {r.finding.code: r for r in report.findings}
    assert by_code["CS101"].finding.audience == "aud_retarget"
    assert by_code["CS102"].finding.audience == "aud_slow_suppress"
    assert by_code["CS103"].finding.destination == "ads"
    assert by_code["CS103"].finding.figure == 7
    small = by_code["CS104"].finding
    assert (small.audience, small.destination, small.figure) == ("aud_small", "meta_live", 20)
    assert "20 matchable members" in small.message and "minimum of 100" in small.message
    leak = by_code["CS105"].finding
    assert leak.audience == "aud_hold" and "through aud_retarget" in leak.message
    assert 0 < (leak.figure or 0) <= 30
    assert by_code["CS106"].finding.audience == "aud_blind"
    assert by_code["CS107"].finding.audience == "aud_idmis"
    assert "matches on email first" in by_code["CS107"].finding.message
    coverage = by_code["CS108"].finding
    assert coverage.audience == "aud_lowcov" and coverage.figure == pytest.approx(0.7)
    assert "email 70%, phone 30%" in coverage.message
    offer = by_code["CS109"].finding
    assert offer.audience == "aud_offer_a" and offer.figure == 20
    dup = by_code["CS110"].finding
    assert dup.audience == "aud_dup" and dup.figure == pytest.approx(0.95)
    assert by_code["CS111"].finding.audience == "aud_undocumented"
    anon = by_code["CS112"].finding
    assert anon.audience == "aud_anon" and anon.figure == pytest.approx(20 / 150)
    drift = by_code["CS113"].finding
    assert drift.audience == "aud_small" and "renamed on Meta" in drift.message
    assert "Small group (paid team)" in drift.message
    errors = sum(1 for rule in RULES.values() if rule.severity == "error")
    assert report.errors == errors and report.warnings == len(RULES) - errors
    for r in report.findings:
        assert r.finding.fix and r.severity == RULES[r.finding.code].severity
