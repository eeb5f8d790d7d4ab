"""`cohortsync plan` tells, before a change is accepted, exactly what compute and sync then do."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from cohortsync.cli import app
from cohortsync.engine import Engine
from tests.ops.conftest import T, edit


def delivered(engine: Engine, audience: str) -> Counter[tuple[str, str]]:
    """(destination, op) → records the destinations resolved for `audience` so far."""
    with engine.store.sql.reading() as tx:
        rows = tx.run(
            "SELECT destination, op, count(*) FROM delivery_log WHERE audience = $a "
            "GROUP BY destination, op",
            {"a": audience},
        )
    return Counter({(str(d), str(o)): int(n) for d, o, n in rows})


def test_plan_counts_are_what_compute_and_sync_then_do(shop_on_both: Path) -> None:
    with Engine.open(shop_on_both) as engine:
        engine.lock()
    # narrower window (fewer enter, some leave) and a larger holdout (flags flip)
    edit(shop_on_both, "within: 7d}", "within: 3d}")
    edit(shop_on_both, "holdout: {percent: 20}", "holdout: {percent: 50}\n    version: 2")
    with Engine.open(shop_on_both) as engine:
        before = {m.profile_id for m in engine.members("cio_cart_7d")}
        found = engine.plan(T)
        assert [a.audience for a in found.audiences] == ["cio_cart_7d"]
        plan = found.audiences[0]
        assert plan.changed == ["segment", "holdout"] and plan.state == "raised"
        sent_before = delivered(engine, "cio_cart_7d")
        report = engine.compute(T)
        engine.sync(clock=lambda: T)
        after = {m.profile_id for m in engine.members("cio_cart_7d")}
        sent = delivered(engine, "cio_cart_7d") - sent_before
    row = report.row("cio_cart_7d")
    assert (plan.enters, plan.leaves) == (row.entered, row.exited) == (0, len(before - after))
    assert plan.leaves > 0 and plan.members_after == len(after)
    assert {s.profile_id for s in plan.leave_sample} <= before - after
    ops = {r.destination: r for r in plan.destinations}
    for destination in ("warehouse", "exports"):
        assert ops[destination].adds == sent[(destination, "add")]
        assert ops[destination].removes == sent[(destination, "remove")]
    assert ops["warehouse"].adds > 0  # holdout flags flipped: the warehouse is told
    assert ops["exports"].holdout_withheld > 0 and ops["warehouse"].holdout_withheld == 0


def test_plan_json_masks_identifiers(shop_dir: Path) -> None:
    with Engine.open(shop_dir) as engine:
        engine.lock()
    edit(shop_dir, "within: 7d}", "within: 3d}")
    result = CliRunner().invoke(app, ["plan", "--json", "--project", str(shop_dir)])
    assert result.exit_code == 0, result.output
    value = json.loads(result.stdout)
    assert "@example.com" not in result.stdout and "shopper" not in result.stdout
    (plan,) = value["audiences"]
    assert plan["audience"] == "cio_cart_7d" and plan["state"] == "changed"
    assert plan["leave_sample"][0]["email"].endswith("…@e…")
    assert {d["destination"] for d in plan["destinations"]} == {"warehouse", "exports"}
