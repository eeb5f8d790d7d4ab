"""The `--json` shape of `cohortsync explain` (documented in README, "### Explain")."""

from __future__ import annotations

from typing import Any

from cohortsync.ops.explain import AudienceWhy, ProfileWhy
from cohortsync.ops.explain_downstream import Downstream, iso, last_delivery
from cohortsync.segments.trace import Deciding, TraceNode
from cohortsync.sync.profile_state import Delivery, Membership


def explanation_json(why: ProfileWhy) -> dict[str, Any]:
    """The whole explanation as JSON-ready values (instants as ISO-8601 UTC)."""
    return {
        "profile_id": why.profile_id,
        "at": iso(why.at_us),
        "past": why.past,
        "events": why.events,
        "audiences": [_audience(a) for a in why.audiences],
    }


def memberships_json(found: list[Membership]) -> list[dict[str, Any]]:
    """Current audience memberships for `profile --json`."""
    return [
        {"audience": m.name, "holdout": m.holdout, "since": iso(m.entered_at_us)}
        for m in found
        if m.kind == "audience"
    ]


def _audience(a: AudienceWhy) -> dict[str, Any]:
    recorded = a.recorded
    flip = a.next_change
    return {
        "audience": a.audience,
        "segment": a.segment,
        "status": a.status,
        "reason": a.reason,
        "excluded_by": list(a.excluded_by),
        "holdout_percent": a.holdout_percent,
        "refresh": a.refresh,
        "recorded": {
            "member": recorded is not None,
            "since": None if recorded is None else iso(recorded.entered_at_us),
            "holdout": None if recorded is None else recorded.holdout,
        },
        "trace": node_json(a.trace),
        "next_change": None
        if flip is None
        else {
            "at": iso(flip.at_us),
            "becomes": "in" if flip.becomes else "out",
            "why": list(flip.why),
            "summary": flip.summary,
        },
        "downstream": [_downstream(d) for d in a.downstream],
    }


def _event(e: Deciding) -> dict[str, Any]:
    return {"message_id": e.message_id, "event": e.event, "timestamp": iso(e.timestamp_us)}


def node_json(n: TraceNode) -> dict[str, Any]:
    """One trace node and its children."""
    out: dict[str, Any] = {"kind": n.kind, "text": n.text, "truth": n.truth}
    if n.name is not None:
        out["name"] = n.name
    if n.kind == "event":
        out["count"] = n.count
        out["compared"] = n.compared
        out["events"] = [_event(e) for e in n.events]
        out["since"] = n.since
        out["reference"] = None if n.reference is None else _event(n.reference)
    if n.kind in ("trait", "has"):
        out["value"] = n.value
    if n.kind == "trait":
        out["computed"] = n.computed
    if n.kind == "segment":
        out["repeated"] = n.repeated
    if n.children:
        out["children"] = [node_json(c) for c in n.children]
    return out


def _delivery(d: Delivery | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "op": d.op,
        "outcome": d.outcome,
        "reason": d.reason,
        "attempts": d.attempts,
        "at": iso(d.at_us),
    }


def _downstream(d: Downstream) -> dict[str, Any]:
    return {
        "destination": d.destination,
        "status": d.status,
        "detail": d.detail,
        "holds": d.holds,
        "dry_run": d.dry_run,
        "takes_holdout": d.takes_holdout,
        "queued": [
            {
                "op": q.op,
                "in_flight": q.in_flight,
                "attempts": q.attempts,
                "changed_at": iso(q.changed_at_us),
                "next_attempt": None if q.next_attempt_us is None else iso(q.next_attempt_us),
                "last_error": q.last_error,
            }
            for q in d.state.queued
        ],
        "last_delivery": _delivery(last_delivery(d.state)),
    }
