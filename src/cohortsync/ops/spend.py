"""Ad spend from a CSV file (`ingest-spend`): every row checked, then all stored at once, a
re-ingested (date, destination, audience) replacing its row; the report divides it by lift."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from cohortsync.errors import InputError
from cohortsync.store.sql import SqlStore, SqlType

COLUMNS = ("date", "destination", "audience", "spend", "currency")
"""The header `ingest-spend` reads (`campaign` may name the audience column)."""

_CURRENCY = re.compile(r"[A-Za-z]{3}")

_STORE = """
INSERT INTO ad_spend (spend_date, destination, audience, spend, currency, ingested_at)
SELECT CAST(spend_date AS DATE), destination, audience, spend, currency, $now FROM {rows}
ON CONFLICT (spend_date, destination, audience) DO UPDATE SET spend = excluded.spend,
  currency = excluded.currency, ingested_at = excluded.ingested_at"""

_EXISTING = """
SELECT count(*) FROM ad_spend a JOIN {rows}
  ON a.spend_date = CAST(r.spend_date AS DATE) AND a.destination = r.destination
 AND a.audience = r.audience"""


@dataclass(frozen=True)
class SpendRow:
    """One day's spend of one audience at one destination."""

    day: date
    destination: str
    audience: str
    spend: float
    currency: str


@dataclass(frozen=True)
class SpendIngest:
    """What `ingest-spend` stored: rows, how many replaced earlier ones, totals per currency."""

    path: str
    rows: int
    replaced: int
    totals: tuple[tuple[str, float], ...]
    """(currency, sum of spend) per currency: amounts in different currencies never add up."""
    first_day: date
    last_day: date
    unreported_audiences: tuple[str, ...]
    """Audiences of the file that are no audience with a holdout in the project: stored, but
    no report divides their spend by a lift."""


def read_spend(path: Path) -> list[SpendRow]:
    """Every row of the CSV file, or one InputError listing each bad row as `file:line: …`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file — give the path of a spend CSV") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read it ({exc}) — give a UTF-8 CSV file") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None:
        raise InputError(f"{path}:1: the file is empty — start it with the header {_HEADER}")
    columns = _columns(path, [h.strip().lower() for h in header])
    rows: list[SpendRow] = []
    problems: list[str] = []
    seen: dict[tuple[date, str, str], int] = {}
    for line, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        try:
            row = _row(columns, cells)
        except ValueError as exc:
            problems.append(f"{path}:{line}: {exc}")
            continue
        key = (row.day, row.destination, row.audience)
        if key in seen:
            problems.append(
                f"{path}:{line}: {row.day} {row.destination} {row.audience} is also on line "
                f"{seen[key]} — keep one row per date, destination and audience"
            )
            continue
        seen[key] = line
        rows.append(row)
    if problems:
        problems.append(f"nothing of {path} was stored: fix the rows above and run it again")
        raise InputError("\n".join(problems))
    if not rows:
        raise InputError(f"{path}:2: no spend rows under the header — add one row per day")
    return rows


_HEADER = ",".join(COLUMNS)


def _columns(path: Path, header: list[str]) -> dict[str, int]:
    """The position of each column, `campaign` read as `audience`."""
    named = ["audience" if h == "campaign" else h for h in header]
    problems = []
    if header.count("audience") + header.count("campaign") > 1:
        problems.append("give one of audience and campaign, not both")
    unknown = [h for h in named if h not in COLUMNS]
    if unknown:
        problems.append(f"unknown column {', '.join(map(repr, unknown))}")
    missing = [c for c in COLUMNS if c not in named]
    if missing:
        problems.append(f"missing column {', '.join(map(repr, missing))}")
    if problems:
        raise InputError(f"{path}:1: {'; '.join(problems)} — the header is {_HEADER}")
    return {name: named.index(name) for name in COLUMNS}


def _row(columns: dict[str, int], cells: list[str]) -> SpendRow:
    """One checked row; a ValueError says what is wrong and how to fix it."""
    if len(cells) != len(columns):
        raise ValueError(f"{len(cells)} cells, the header has {len(columns)} — one per column")
    value = {name: cells[i].strip() for name, i in columns.items()}
    try:
        day = date.fromisoformat(value["date"]) if len(value["date"]) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise ValueError(f"date {value['date']!r} is not a date — write it as 2026-03-01")
    for name in ("destination", "audience"):
        if not value[name]:
            raise ValueError(f"{name} is empty — name the {name} the spend bought")
    try:
        spend = float(value["spend"])
    except ValueError:
        spend = math.nan
    if not math.isfinite(spend) or spend < 0:
        raise ValueError(
            f"spend {value['spend']!r} is not an amount — write a number ≥ 0 like 1234.50 "
            "(no currency sign or thousands separator)"
        )
    if not _CURRENCY.fullmatch(value["currency"]):
        raise ValueError(
            f"currency {value['currency']!r} is not an ISO 4217 code — write USD, EUR, …"
        )
    return SpendRow(day, value["destination"], value["audience"], spend, value["currency"].upper())


def store_spend(
    sql: SqlStore, path: Path, rows: list[SpendRow], reported: Collection[str], now: datetime
) -> SpendIngest:
    """Store `rows` in one transaction (replacing rows of the same date, destination and
    audience); what was stored. `reported`: the audiences with a holdout."""
    data: list[list[Any]] = [
        [r.day.isoformat() for r in rows],
        [r.destination for r in rows],
        [r.audience for r in rows],
        [r.spend for r in rows],
        [r.currency for r in rows],
    ]
    columns: tuple[tuple[str, SqlType], ...] = (
        ("spend_date", "text"),
        ("destination", "text"),
        ("audience", "text"),
        ("spend", "double"),
        ("currency", "text"),
    )
    with sql.transaction() as tx:
        relation = tx.rows("r", columns, data)
        replaced = int(tx.run(_EXISTING, rows=relation)[0][0])
        tx.run(_STORE, {"now": now}, rows=relation)
    totals: dict[str, float] = {}
    for r in rows:
        totals[r.currency] = totals.get(r.currency, 0.0) + r.spend
    return SpendIngest(
        str(path),
        len(rows),
        replaced,
        tuple(sorted(totals.items())),
        min(r.day for r in rows),
        max(r.day for r in rows),
        tuple(sorted({r.audience for r in rows} - set(reported))),
    )


def spend_rows(
    sql: SqlStore, audience: str, first: date, last: date
) -> Iterator[tuple[date, str, float]]:
    """(day, currency, spend) of one audience from `first` to `last`, summed over destinations."""
    with sql.reading() as tx:
        found = tx.run(
            "SELECT spend_date, currency, sum(spend) FROM ad_spend WHERE audience = $audience "
            "AND spend_date >= CAST($first AS DATE) AND spend_date <= CAST($last AS DATE) "
            "GROUP BY spend_date, currency ORDER BY spend_date, currency",
            {"audience": audience, "first": first.isoformat(), "last": last.isoformat()},
        )
    for day, currency, amount in found:
        yield day, str(currency), float(amount)
