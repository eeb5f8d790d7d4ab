"""The catalog as a document: Markdown (for a repository or a wiki), a self-contained HTML
page (every value escaped), or JSON (for tools)."""

from __future__ import annotations

import dataclasses
import html
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from cohortsync.ops.catalog import Catalog, CatalogEntry

_NEVER = "never"


def catalog_value(catalog: Catalog) -> dict[str, Any]:
    """The catalog as JSON-ready data (instants as ISO-8601 text)."""
    return orjson.loads(orjson.dumps(dataclasses.asdict(catalog)))  # type: ignore[no-any-return]


def catalog_json(catalog: Catalog) -> str:
    """The catalog as indented JSON."""
    return orjson.dumps(catalog_value(catalog), option=orjson.OPT_INDENT_2).decode() + "\n"


def _when(value: datetime | None) -> str:
    return _NEVER if value is None else value.isoformat(timespec="seconds")


def _holdout(entry: CatalogEntry) -> str:
    if entry.holdout_percent is None:
        return "none"
    text = f"{entry.holdout_percent:g}% of members held back as a control group"
    if entry.holdout_sent_to:
        text += f"; sent flagged as holdout to {', '.join(entry.holdout_sent_to)}"
    if entry.holdout_withheld_from:
        text += f"; never sent to {', '.join(entry.holdout_withheld_from)}"
    return text


def _refresh(entry: CatalogEntry) -> str:
    exits = "exits in real time" if entry.realtime_exits else "exits at the next refresh"
    return f"refreshed {entry.refresh_words}; {exits}"


def _version(entry: CatalogEntry) -> str:
    text = f"{entry.version}"
    if entry.lock_state == "unlocked":
        return text + " (not locked yet: never synced, or no cohortsync.lock)"
    if entry.lock_state != "same":
        text += f" (locked: {entry.locked_version}; {entry.lock_state})"
    return text


def _facts(entry: CatalogEntry) -> list[tuple[str, str]]:
    """(label, text) of every line of an entry, in reading order."""
    size = f"{entry.size:,} members"
    if entry.holdout_percent is not None:
        size += f" ({entry.holdout_size:,} in the holdout)"
    facts = [
        ("Owner", entry.owner or "none"),
        ("Enters", entry.entry_rule),
        ("Leaves", entry.exit_rule),
        ("Refresh", _refresh(entry)),
        ("Exclusions", ", ".join(entry.exclusions) or "none"),
        ("Holdout", _holdout(entry)),
        (
            "Identifiers sent",
            ", ".join(entry.identifiers) or "every identifier a destination takes",
        ),
        ("Offer", entry.offer or "none stated"),
        ("Destinations", ", ".join(entry.destinations) or "none"),
        ("Size", size),
        ("Last computed", _when(entry.last_computed) + " (the project's latest compute run)"),
        ("Last scheduled refresh", _when(entry.last_refresh)),
        ("Version", _version(entry)),
    ]
    if entry.retired:
        facts.insert(0, ("Retired", "yes: it has no members, destinations are being emptied"))
    return facts


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def catalog_markdown(catalog: Catalog) -> str:
    """The catalog as Markdown: a summary table, then one section per audience."""
    lines = [
        "# Audience catalog",
        "",
        f"Generated {_when(catalog.generated_at)} from cohortsync.yml"
        + (" and cohortsync.lock." if catalog.lock_found else " (no cohortsync.lock yet).")
        + " Sizes are the members recorded by the latest compute.",
        "",
        "| audience | owner | members | refresh | real-time exits | version | destinations |",
        "| --- | --- | ---: | --- | --- | ---: | --- |",
    ]
    for e in catalog.audiences:
        row = [
            e.name,
            e.owner or "",
            f"{e.size:,}",
            e.refresh,
            "yes" if e.realtime_exits else "no",
            str(e.version),
            ", ".join(e.destinations),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    for e in catalog.audiences:
        lines += ["", f"## {e.name}", ""]
        if e.description:
            lines += [e.description.strip(), ""]
        lines += [f"- **{label}:** {text}" for label, text in _facts(e)]
        if e.history:
            lines += ["", "| version | fingerprint | accepted |", "| ---: | --- | --- |"]
            lines += [
                f"| {h.version} | `{h.fingerprint[:19]}…` | {h.accepted_at} |" for h in e.history
            ]
    return "\n".join(lines) + "\n"


_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f3f3f3}section{border-top:1px solid #ddd;
margin-top:1.5rem}dt{font-weight:600}dd{margin:0 0 .4rem 0}code{font-size:13px}
"""


def catalog_html(catalog: Catalog) -> str:
    """The catalog as one self-contained HTML page; every value is escaped."""
    e_ = html.escape
    head = (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        "<title>Audience catalog</title>"
        f"<style>{_STYLE}</style></head><body>\n<h1>Audience catalog</h1>\n"
        f"<p>Generated {e_(_when(catalog.generated_at))} from cohortsync.yml"
        + (" and cohortsync.lock." if catalog.lock_found else " (no cohortsync.lock yet).")
        + " Sizes are the members recorded by the latest compute.</p>\n"
    )
    rows = "".join(
        f"<tr><td><a href='#{e_(e.name)}'>{e_(e.name)}</a></td><td>{e_(e.owner or '')}</td>"
        f"<td>{e.size:,}</td><td>{e_(e.refresh)}</td>"
        f"<td>{'yes' if e.realtime_exits else 'no'}</td><td>{e.version}</td>"
        f"<td>{e_(', '.join(e.destinations))}</td></tr>\n"
        for e in catalog.audiences
    )
    summary = (
        "<table><tr><th>audience</th><th>owner</th><th>members</th><th>refresh</th>"
        f"<th>real-time exits</th><th>version</th><th>destinations</th></tr>\n{rows}</table>\n"
    )
    sections = []
    for e in catalog.audiences:
        facts = "".join(f"<dt>{e_(k)}</dt><dd>{e_(v)}</dd>" for k, v in _facts(e))
        part = f"<section id='{e_(e.name)}'><h2>{e_(e.name)}</h2>\n"
        if e.description:
            part += f"<p>{e_(e.description.strip())}</p>\n"
        part += f"<dl>{facts}</dl>\n"
        if e.history:
            history = "".join(
                f"<tr><td>{h.version}</td><td><code>{e_(h.fingerprint)}</code></td>"
                f"<td>{e_(h.accepted_at)}</td></tr>"
                for h in e.history
            )
            part += (
                "<table><tr><th>version</th><th>fingerprint</th><th>accepted</th></tr>"
                f"{history}</table>\n"
            )
        sections.append(part + "</section>\n")
    return head + summary + "".join(sections) + "</body></html>\n"


def write_catalog(catalog: Catalog, folder: Path) -> list[Path]:
    """Write `catalog.md` and `catalog.html` into `folder` (created if need be)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("catalog.md", catalog_markdown(catalog)),
        ("catalog.html", catalog_html(catalog)),
    ):
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
