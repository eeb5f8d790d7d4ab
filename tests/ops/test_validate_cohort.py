"""`validate --cohort FILE` on a small project, on DuckDB and on Postgres: a cohort passes and is
cleaned up downstream; a destination that refuses, or an expectation the project does not meet,
fails with exit 1 and names the row; a bad cohort file is one `FILE:LINE:` error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from cohortsync.engine import Engine
from tests.conftest import PROJECT_YAML, LiveServer, free_port
from tests.fakes.meta import MetaFake
from tests.ops.cli_main import Ran, run_main
from tests.postgres import postgres_schema

AUDIENCES = """\
segments:
  cart_3h: {event: added_to_cart, within: 3h}
  recent_buyer: {event: order_completed, within: 7d}
audiences:
  cio_cart_3h:
    segment: cart_3h
    exclude: [recent_buyer]
    identifiers: [email]
    destinations: [DESTINATIONS]
  cio_buyers_suppress:
    segment: recent_buyer
    destinations: [warehouse]
destinations:
  warehouse: {type: warehouse, url: "duckdb:///.cohortsync/warehouse.duckdb"}
"""

CART = {
    "email": "qa+cart@example.org",
    "events": [{"event": "Added To Cart", "ago": "1h", "properties": {"sku": "A"}}],
    "expect": ["cio_cart_3h"],
}
BROWSER = {"email": "qa+none@example.org", "events": [], "expect": []}


def write_project(folder: Path, store: str, meta: MetaFake | None = None) -> None:
    text = PROJECT_YAML.replace("store: .cohortsync/store.duckdb", f"store: {store}")
    destinations = "warehouse, meta_ads" if meta else "warehouse"
    text += AUDIENCES.replace("DESTINATIONS", destinations)
    if meta is not None:
        text += f"""\
  meta_ads:
    type: meta_custom_audience
    ad_account_id: act_{meta.ad_account_id}
    access_token: {meta.token}
    api_url: {meta.base_url}
"""
    (folder / "cohortsync.yml").write_text(text, encoding="utf-8")


def write_cohort(folder: Path, *profiles: dict[str, Any]) -> Path:
    path = folder / "cohort.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in profiles), encoding="utf-8")
    return path


def warehouse(folder: Path) -> set[tuple[str, str]]:
    with duckdb.connect(str(folder / ".cohortsync" / "warehouse.duckdb"), read_only=True) as con:
        rows = con.sql("SELECT audience, email FROM cohortsync.audience_members").fetchall()
    return {(str(a), str(e)) for a, e in rows}


def validate(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *more: str
) -> Ran:
    return run_main(["validate", "-p", str(folder), *more], monkeypatch, capsys)


def test_a_cohort_file_passes_and_is_cleaned_up_downstream(
    tmp_path: Path,
    store_location: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_project(tmp_path, store_location)
    cohort = write_cohort(tmp_path, CART, BROWSER)
    ran = validate(tmp_path, monkeypatch, capsys, "--cohort", str(cohort), "--json")
    assert ran.code == 0, ran.out + ran.err
    rows = json.loads(ran.out)["rows"]
    got = {(r["profile"], r["step"], r["audience"], r["expected"]) for r in rows}
    assert got == {
        ("q***+cart@example.org", "enter", "cio_cart_3h", "member"),
        ("q***+cart@example.org", "purchase", "cio_cart_3h", "leaves"),
        ("q***+cart@example.org", "purchase", "cio_buyers_suppress", "enters"),
        ("q***+none@example.org", "purchase", "cio_buyers_suppress", "enters"),
    }
    assert all(r["ok"] and r["destination"] == "warehouse" for r in rows)
    assert all(r["latency_s"] is not None and r["latency_s"] >= 0 for r in rows)
    assert "qa+cart" not in ran.out  # identifiers are masked
    # the purchase is true downstream: out of retargeting, into suppression
    assert warehouse(tmp_path) == {
        ("cio_buyers_suppress", "qa+cart@example.org"),
        ("cio_buyers_suppress", "qa+none@example.org"),
    }
    ran = validate(tmp_path, monkeypatch, capsys, "--cleanup", "--json")
    assert ran.code == 0, ran.out + ran.err
    assert json.loads(ran.out)["done"] is True
    assert warehouse(tmp_path) == set()
    with Engine.open(tmp_path) as engine:
        assert engine.stats()["test_profiles"] == {"total": 0, "events": 0}
        assert engine.store.find_profile("email", "qa+cart@example.org") is None
    # the same addresses can be validated again once cleaned up
    ran = validate(tmp_path, monkeypatch, capsys, "--cohort", str(cohort), "--json")
    assert ran.code == 0, ran.out + ran.err


def test_a_destination_that_refuses_fails_and_names_the_row(
    project_dir: Path,
    meta_fake: MetaFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_project(project_dir, ".cohortsync/store.duckdb", meta_fake)
    meta_fake.fail(400, seconds=600)
    cohort = write_cohort(project_dir, CART)
    ran = validate(project_dir, monkeypatch, capsys, "--cohort", str(cohort), "--timeout", "2s")
    assert ran.code == 1
    failing = [line for line in ran.out.splitlines() if "FAIL" in line]
    assert failing and all("meta_ads" in line and "cio_cart_3h" in line for line in failing)
    assert any("dead letter" in line for line in failing)
    ok = [line for line in ran.out.splitlines() if "warehouse" in line]
    assert ok and all(" ok" in line for line in ok)
    assert "checks failed" in ran.out


def test_an_expectation_the_project_does_not_meet_fails(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(project_dir, ".cohortsync/store.duckdb")
    wrong = {**CART, "expect": ["cio_buyers_suppress"]}  # a cart add is no purchase
    cohort = write_cohort(project_dir, wrong)
    args = ("--cohort", str(cohort), "--timeout", "1s", "--json")
    ran = validate(project_dir, monkeypatch, capsys, *args)
    assert ran.code == 1
    out = json.loads(ran.out)
    assert out["passed"] is False
    failed = {(r["audience"], r["expected"], r["seen"]) for r in out["rows"] if r["ok"] is False}
    assert failed == {
        ("cio_buyers_suppress", "member", "not a member"),
        ("cio_cart_3h", "not a member", "member"),
    }


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "cohort.jsonl:2: not JSON"),
        ('{"email": "a@b.co", "expect": ["nope"]}', "cohort.jsonl:2: expect: no audience named"),
        ('{"email": "a@b.co", "events": [{"event": "x", "ago": "soon"}]}', "ago 'soon'"),
        ('{"mail": "a@b.co"}', "cohort.jsonl:2: unknown key 'mail'"),
    ],
)
def test_a_bad_cohort_file_is_one_located_error(
    project_dir: Path,
    line: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_project(project_dir, ".cohortsync/store.duckdb")
    cohort = project_dir / "cohort.jsonl"
    cohort.write_text(json.dumps(CART) + "\n" + line + "\n", encoding="utf-8")
    ran = validate(project_dir, monkeypatch, capsys, "--cohort", str(cohort))
    assert ran.code == 1
    assert message in ran.err
    assert len(ran.err.strip().splitlines()) == 1 and "Traceback" not in ran.err
    with Engine.open(project_dir) as engine:
        assert engine.stats()["events"]["total"] == 0  # nothing was sent


def test_generate_needs_a_domain(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(project_dir, ".cohortsync/store.duckdb")
    ran = validate(project_dir, monkeypatch, capsys, "--generate", "3")
    assert ran.code == 1
    assert ran.err.strip() == "error: --generate needs --domain D: test profiles are test+N@D"


def test_events_go_to_a_running_serve_over_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --url the cohort is sent to `serve`'s /v1/batch (a real uvicorn over a Postgres
    store, which both processes' engines open); the events stored are the ones it received."""
    with postgres_schema() as url:
        write_project(tmp_path, url)
        cohort = write_cohort(tmp_path, CART, BROWSER)
        with Engine.open(tmp_path) as engine:
            server = LiveServer(engine)
            server.start()
            try:
                args = ("--cohort", str(cohort), "--url", server.url, "--json")
                ran = validate(tmp_path, monkeypatch, capsys, *args)
            finally:
                server.stop()
            sources = engine.store.query("SELECT DISTINCT source FROM events")
        assert ran.code == 0, ran.out + ran.err
        assert json.loads(ran.out)["passed"] is True
        assert sources == [("web",)]  # the write key's source: they came over HTTP


def test_an_unreachable_serve_is_one_error(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(project_dir, ".cohortsync/store.duckdb")
    cohort = write_cohort(project_dir, CART)
    port = free_port()
    args = ("--cohort", str(cohort), "--url", f"http://127.0.0.1:{port}")
    ran = validate(project_dir, monkeypatch, capsys, *args)
    assert ran.code == 1
    assert ran.err.startswith(f"error: cannot reach http://127.0.0.1:{port}/v1/batch")
    assert len(ran.err.strip().splitlines()) == 1


def test_a_live_ad_platform_acknowledges_then_drops_the_buyer(
    project_dir: Path,
    meta_fake: MetaFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Against Meta's contract fake (not a dry run): the add is acknowledged, and after the
    purchase the fake no longer holds the hashed email in the retargeting audience."""
    write_project(project_dir, ".cohortsync/store.duckdb", meta_fake)
    cohort = write_cohort(project_dir, CART)
    ran = validate(project_dir, monkeypatch, capsys, "--cohort", str(cohort), "--json")
    assert ran.code == 0, ran.out + ran.err
    rows = {(r["step"], r["destination"]): r for r in json.loads(ran.out)["rows"]}
    assert rows[("enter", "meta_ads")]["acknowledged"] == "acknowledged"
    assert rows[("purchase", "meta_ads")]["acknowledged"] == "removed"
    digest = hashlib.sha256(b"qa+cart@example.org").hexdigest()
    ops = [b.op for b in meta_fake.batches if any(digest in r.values() for r in b.rows)]
    assert ops == ["add", "remove"]  # the fake received the hashed email, then its removal
    assert digest not in meta_fake.members("cio_cart_3h")
