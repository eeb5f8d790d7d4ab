"""The example project's promise: a buyer never stays in an ad-platform audience until its next
refresh. Each cadence audience sent to an ad platform gets a member built from its own rule (as
`validate` builds one); if that member's order makes the rule false, the audience must exit in
real time."""

from __future__ import annotations

from pathlib import Path

from cohortsync.config.loader import PROJECT_FILE, parse_project, parse_segments
from cohortsync.config.scaffold import render_template
from cohortsync.ops import validate_model as model
from cohortsync.ops.validate_generate import generate_for
from cohortsync.segments.evaluate import evaluate
from cohortsync.sync.configure import sync_setup

NOW = 1_780_000_000_000_000
HOUR = 3_600_000_000


def test_cadence_audiences_paid_retargets_drop_a_buyer_at_once(tmp_path: Path) -> None:
    loaded = parse_project(render_template("wk_test_0123456789"), tmp_path / PROJECT_FILE)
    project = parse_segments(loaded)
    setup = sync_setup(loaded, project)
    paid = {
        r.audience for r in setup.routes if setup.classes[r.destination].capabilities.ad_platform
    }

    left_on_purchase: dict[str, str] = {}
    for n, name in enumerate(sorted(paid)):
        audience = project.audiences[name]
        if audience.refresh == "realtime":
            continue
        member = model.TestProfile(n, f"test+{n}@example.com", [], set())
        assert generate_for(name, project, member, NOW, HOUR), (
            f"no member could be built for {name}"
        )
        bought = model.history(member, NOW + 1, (model.purchase(),))
        if not evaluate(audience.condition, bought, NOW + 1, project):
            left_on_purchase[name] = audience.exits

    assert len(left_on_purchase) >= 5  # win-backs, replenishment, browse abandon, non-converters
    assert left_on_purchase == dict.fromkeys(left_on_purchase, "realtime")
