"""An audience's logic as canonical JSON and its SHA-256: what `cohortsync.lock` pins.

The fingerprint covers what decides who is a member and what a destination matches on: the
segment tree with every referenced segment and computed trait written out in place (so editing
a building block changes every audience built on it), the excluded segments' trees, the
holdout percent and the identifiers. Names, descriptions, owners, refresh, destinations and
source positions do not count: moving a line or rewording a description changes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import orjson

from cohortsync.segments.ast import (
    Audience,
    Duration,
    SegmentProject,
    SegmentRef,
    TraitCondition,
)

PARTS = ("segment", "exclusions", "holdout", "identifiers")
"""The parts of an audience's logic, each fingerprinted on its own so a refusal names it."""
PART_WORDS = {
    "segment": "segment tree",
    "exclusions": "exclusions",
    "holdout": "holdout",
    "identifiers": "identifiers",
}


@dataclass(frozen=True)
class Fingerprint:
    """The whole fingerprint and one per part (`PARTS`), each `sha256:<hex>`."""

    value: str
    parts: dict[str, str]

    def changed_parts(self, locked: dict[str, str]) -> list[str]:
        """The parts whose fingerprint differs from `locked` (all of them when unknown)."""
        return [p for p in PARTS if locked.get(p) != self.parts[p]]


def fingerprint(audience: Audience, project: SegmentProject) -> Fingerprint:
    """The fingerprint of `audience`'s logic within `project`."""
    parts = logic(audience, project)
    return Fingerprint(_sha(parts), {name: _sha(parts[name]) for name in PARTS})


def logic(audience: Audience, project: SegmentProject) -> dict[str, Any]:
    """The canonical, JSON-ready form of the audience's logic, by part."""
    exclusions = sorted(
        (_segment(name, project, ()) for name in set(audience.exclude)),
        key=lambda tree: orjson.dumps(tree, option=orjson.OPT_SORT_KEYS),
    )
    return {
        "segment": _segment(audience.segment, project, ()),
        "exclusions": exclusions,
        "holdout": audience.holdout_percent,
        "identifiers": sorted(set(audience.identifiers)),
    }


def _sha(value: Any) -> str:
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(text).hexdigest()


def _segment(name: str, project: SegmentProject, seen: tuple[str, ...]) -> Any:
    """A segment's tree with references inlined (a cycle, which the parser refuses, stops)."""
    segment = project.segments.get(name)
    if segment is None or name in seen:
        return {"missing_segment": name}
    return _node(segment.condition, project, (*seen, name))


def _node(node: Any, project: SegmentProject, seen: tuple[str, ...]) -> Any:
    """Any AST node as plain data: its class name and fields, positions left out."""
    if isinstance(node, SegmentRef):
        return {"segment": _segment(node.name, project, seen)}
    if isinstance(node, TraitCondition):
        field = node.comparison.field
        trait = project.traits.get(field)
        source = _node(trait, project, seen) if trait is not None else {"identify": field}
        return {
            "trait": source,
            "op": node.comparison.op,
            "value": _node(node.comparison.value, project, seen),
        }
    if isinstance(node, Duration):
        return {"micros": node.micros}
    if is_dataclass(node) and not isinstance(node, type):
        out: dict[str, Any] = {"node": type(node).__name__}
        for f in fields(node):
            if f.name in ("position", "name"):
                continue
            out[f.name] = _node(getattr(node, f.name), project, seen)
        return out
    if isinstance(node, tuple | list):
        return [_node(item, project, seen) for item in node]
    if isinstance(node, dict):
        return {str(k): _node(v, project, seen) for k, v in node.items()}
    return node
