"""`cohortsync ingest-spend FILE`: ad spend per day, destination and audience, for the report's
cost per incremental conversion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cohortsync.commands.shared import ProjectOption, app, console
from cohortsync.engine import Engine, SpendIngest


@app.command("ingest-spend")
def ingest_spend(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV with the header date,destination,audience,spend,currency "
            "(campaign may name the audience column).",
            show_default=False,
        ),
    ],
    project: ProjectOption = None,
) -> None:
    """Store ad spend from a CSV file: every row checked first (a bad one stores nothing), a
    date, destination and audience ingested again replacing its row."""
    with Engine.open(project) as engine:
        stored = engine.ingest_spend(file)
    console.print(
        f"stored {stored.rows} rows from {escape(stored.path)} ({stored.replaced} replaced "
        f"earlier ones), {stored.first_day} – {stored.last_day}",
        soft_wrap=True,
    )
    console.print(spend_stored_table(stored))
    if stored.unreported_audiences:
        names = ", ".join(stored.unreported_audiences)
        console.print(
            f"[yellow]note:[/] no audience with a holdout is named {escape(names)}: its spend is "
            "stored, and the report divides it by a lift once such an audience exists",
            soft_wrap=True,
        )


def spend_stored_table(stored: SpendIngest) -> Table:
    """Rows stored and the total per currency (currencies are never added together)."""
    table = Table(title="Spend stored, per currency")
    table.add_column("currency")
    table.add_column("total spend", justify="right")
    for currency, total in stored.totals:
        table.add_row(currency, f"{total:,.2f}")
    return table
