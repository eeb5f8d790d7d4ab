"""The warehouse destination's tables and the SQL that merges a staged batch into them.

One SQL text serves DuckDB and Postgres: they differ only in a few column types, so the merge
logic (what is new, what a stay is, who is a member) is written once and tested on both.
Names are validated plain identifiers and always quoted, so they mean exactly what was written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ColumnType = Literal["text", "bigint", "int", "bool", "ts", "double", "json"]
IDENTIFIER_COLUMNS = ("user_id", "email", "phone", "anonymous_id")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_PREFIX = 40
STAGE_CHANGES = "cohortsync_stage_changes"
STAGE_MEMBERS = "cohortsync_stage_members"
STAGE_CONVERSIONS = "cohortsync_stage_conversions"


@dataclass(frozen=True)
class Column:
    """One column of a staged batch: its name and portable type."""

    name: str
    type: ColumnType


CHANGE_COLUMNS: tuple[Column, ...] = (
    Column("change_id", "bigint"),
    Column("batch_id", "text"),
    Column("audience", "text"),
    Column("profile_id", "text"),
    Column("operation", "text"),
    Column("holdout", "bool"),
    Column("at", "ts"),
    *(Column(kind, "text") for kind in IDENTIFIER_COLUMNS),
)

CONVERSION_COLUMNS: tuple[Column, ...] = (
    Column("conversion_id", "bigint"),
    Column("batch_id", "text"),
    Column("message_id", "text"),
    Column("name", "text"),
    Column("event", "text"),
    Column("at", "ts"),
    Column("profile_id", "text"),
    Column("value", "double"),
    Column("currency", "text"),
    *(Column(kind, "text") for kind in IDENTIFIER_COLUMNS),
    Column("properties", "json"),
)


@dataclass(frozen=True)
class Dialect:
    """What differs between the engines: column types, placeholders, whether to add indexes."""

    name: Literal["duckdb", "postgres"]
    param: str
    types: dict[ColumnType, str]
    indexes: bool


_COMMON_TYPES: dict[ColumnType, str] = {
    "text": "TEXT",
    "bigint": "BIGINT",
    "int": "INTEGER",
    "bool": "BOOLEAN",
    "ts": "TIMESTAMPTZ",
    "double": "DOUBLE PRECISION",
}
DUCKDB = Dialect("duckdb", "?", {**_COMMON_TYPES, "json": "JSON"}, indexes=False)
POSTGRES = Dialect("postgres", "%s", {**_COMMON_TYPES, "json": "JSONB"}, indexes=True)


def q(name: str) -> str:
    """Quote one identifier (names are validated, so this never needs escaping)."""
    return f'"{name}"'


def column_list(columns: tuple[Column, ...] | tuple[str, ...]) -> str:
    """`"a", "b", ...` for INSERT and COPY column lists."""
    names = [c.name if isinstance(c, Column) else c for c in columns]
    return ", ".join(q(n) for n in names)


@dataclass(frozen=True)
class Names:
    """The qualified names of the warehouse objects under one schema and table prefix."""

    schema: str
    prefix: str = ""

    def table(self, base: str) -> str:
        """A quoted, schema-qualified name such as `"cohortsync"."audience_members"`."""
        return f"{q(self.schema)}.{q(self.prefix + base)}"

    def shown(self, base: str) -> str:
        """The unquoted name, for people: `cohortsync.audience_members`."""
        return f"{self.schema}.{self.prefix}{base}"

    @property
    def members(self) -> str:
        """The `audience_members` table."""
        return self.table("audience_members")

    @property
    def changes(self) -> str:
        """The `audience_changes` table."""
        return self.table("audience_changes")

    @property
    def stays(self) -> str:
        """The `audience_stays` view."""
        return self.table("audience_stays")

    @property
    def conversions(self) -> str:
        """The `conversions` table."""
        return self.table("conversions")

    @property
    def applied(self) -> str:
        """The `applied_batches` table."""
        return self.table("applied_batches")


def ddl(names: Names, dialect: Dialect) -> list[tuple[str, list[str]]]:
    """Per object (`""` is the schema), the statements that create it; run only for the
    objects that do not exist yet, so a warehouse prepared by an administrator is used as is."""
    t = dialect.types
    ids = ", ".join(f"{q(kind)} {t['text']}" for kind in IDENTIFIER_COLUMNS)
    members = f"""CREATE TABLE IF NOT EXISTS {names.members} (
        "audience" TEXT NOT NULL,
        "profile_id" TEXT NOT NULL,
        "holdout" BOOLEAN NOT NULL,
        {ids},
        "entered_at" TIMESTAMPTZ NOT NULL,
        "updated_at" TIMESTAMPTZ NOT NULL,
        PRIMARY KEY ("audience", "profile_id"))"""
    changes = f"""CREATE TABLE IF NOT EXISTS {names.changes} (
        "change_id" BIGINT PRIMARY KEY,
        "batch_id" TEXT NOT NULL,
        "audience" TEXT NOT NULL,
        "profile_id" TEXT NOT NULL,
        "operation" TEXT NOT NULL CHECK ("operation" IN ('add', 'remove')),
        "holdout" BOOLEAN NOT NULL,
        "at" TIMESTAMPTZ NOT NULL)"""
    conversions = f"""CREATE TABLE IF NOT EXISTS {names.conversions} (
        "conversion_id" BIGINT PRIMARY KEY,
        "batch_id" TEXT NOT NULL,
        "message_id" TEXT NOT NULL,
        "name" TEXT NOT NULL,
        "event" TEXT NOT NULL,
        "at" TIMESTAMPTZ NOT NULL,
        "profile_id" TEXT NOT NULL,
        "value" {t["double"]},
        "currency" TEXT,
        {ids},
        "properties" {t["json"]})"""
    applied = f"""CREATE TABLE IF NOT EXISTS {names.applied} (
        "batch_id" TEXT PRIMARY KEY,
        "kind" TEXT NOT NULL,
        "applied_at" TIMESTAMPTZ NOT NULL,
        "rows" INTEGER NOT NULL)"""
    index = q(f"{names.prefix}audience_changes_by_profile")
    by_profile = (
        f'CREATE INDEX IF NOT EXISTS {index} ON {names.changes} ("audience", "profile_id", '
        '"change_id")'
    )
    return [
        ("", [f"CREATE SCHEMA IF NOT EXISTS {q(names.schema)}"]),
        ("audience_members", [members]),
        ("audience_changes", [changes, by_profile] if dialect.indexes else [changes]),
        ("conversions", [conversions]),
        ("applied_batches", [applied]),
        ("audience_stays", [f"CREATE OR REPLACE VIEW {names.stays} AS {stays_sql(names)}"]),
    ]


def stays_sql(names: Names) -> str:
    """One row per stay: an add that follows a remove (or nothing) opens it, the next remove
    closes it; repeated adds (holdout or identifier updates) stay inside the same stay."""
    return f"""
        WITH ordered AS (
            SELECT "audience", "profile_id", "operation", "holdout", "at", "change_id",
                   LAG("operation") OVER (
                       PARTITION BY "audience", "profile_id" ORDER BY "change_id") AS prev_op
            FROM {names.changes}
        ), edges AS (
            SELECT * FROM ordered WHERE prev_op IS NULL OR prev_op <> "operation"
        ), paired AS (
            SELECT edges.*,
                   LEAD("at") OVER (
                       PARTITION BY "audience", "profile_id" ORDER BY "change_id") AS next_at
            FROM edges
        )
        SELECT "audience", "profile_id", "holdout", "at" AS "entered_at", next_at AS "exited_at",
               "change_id" AS "entry_change_id"
        FROM paired WHERE "operation" = 'add'"""


def claim_batch_sql(names: Names, dialect: Dialect) -> str:
    """Record a batch as applied; affects no row when it already was (the batch is then skipped)."""
    p = dialect.param
    return (
        f'INSERT INTO {names.applied} ("batch_id", "kind", "applied_at", "rows") '
        f'VALUES ({p}, {p}, {p}, {p}) ON CONFLICT ("batch_id") DO NOTHING'
    )


def insert_changes_sql(names: Names) -> str:
    """Log the staged changes; a change_id already logged (by any batch) is left as it was."""
    cols = column_list(
        ("change_id", "batch_id", "audience", "profile_id", "operation", "holdout", "at")
    )
    return (
        f"INSERT INTO {names.changes} ({cols}) SELECT {cols} FROM {STAGE_CHANGES} "
        'ON CONFLICT ("change_id") DO NOTHING'
    )


def final_members_sql(names: Names) -> str:
    """Per (audience, profile), the last new change of this batch in change_id order, when the
    current stay began, and whether the batch removed the profile before that (a new stay)."""
    return f"""
        WITH fresh AS (
            SELECT s.* FROM {STAGE_CHANGES} s
            JOIN {names.changes} c ON c."change_id" = s."change_id" AND c."batch_id" = s."batch_id"
        ), marked AS (
            SELECT fresh.*,
                   MAX(CASE WHEN "operation" = 'remove' THEN "change_id" END)
                       OVER (PARTITION BY "audience", "profile_id") AS last_remove
            FROM fresh
        ), ranked AS (
            SELECT marked.*,
                   MIN(CASE WHEN "operation" = 'add'
                             AND (last_remove IS NULL OR "change_id" > last_remove)
                            THEN "at" END)
                       OVER (PARTITION BY "audience", "profile_id") AS stay_start,
                   ROW_NUMBER() OVER (
                       PARTITION BY "audience", "profile_id" ORDER BY "change_id" DESC) AS rn
            FROM marked
        )
        SELECT "audience", "profile_id", "operation", "holdout",
               "user_id", "email", "phone", "anonymous_id",
               stay_start AS "entered_at", "at" AS "updated_at",
               last_remove IS NOT NULL AS "restarted"
        FROM ranked WHERE rn = 1"""


def merge_members_sql(names: Names) -> list[str]:
    """Apply the final states: removes delete, a stay restarted in the batch gets its new
    entry time, and adds upsert holdout and identifiers (keeping entered_at of a running stay)."""
    m, f = names.members, STAGE_MEMBERS
    key = 'm."audience" = f."audience" AND m."profile_id" = f."profile_id"'
    ids = ", ".join(f"{q(k)} = excluded.{q(k)}" for k in IDENTIFIER_COLUMNS)
    cols = column_list(
        ("audience", "profile_id", "holdout", *IDENTIFIER_COLUMNS, "entered_at", "updated_at")
    )
    return [
        f"DELETE FROM {m} m USING {f} f WHERE {key} AND f.\"operation\" = 'remove'",
        f'UPDATE {m} m SET "entered_at" = f."entered_at" FROM {f} f '
        f'WHERE {key} AND f."operation" = \'add\' AND f."restarted"',
        f"INSERT INTO {m} ({cols}) SELECT {cols} FROM {f} WHERE \"operation\" = 'add' "
        f'ON CONFLICT ("audience", "profile_id") DO UPDATE SET '
        f'"holdout" = excluded."holdout", {ids}, "updated_at" = excluded."updated_at"',
    ]


def insert_conversions_sql(names: Names) -> str:
    """Store the staged conversions; a conversion_id already stored is left as it was."""
    cols = column_list(CONVERSION_COLUMNS)
    return (
        f"INSERT INTO {names.conversions} ({cols}) SELECT {cols} FROM {STAGE_CONVERSIONS} "
        'ON CONFLICT ("conversion_id") DO NOTHING'
    )
