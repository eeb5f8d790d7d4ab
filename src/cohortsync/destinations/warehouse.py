"""The `warehouse` destination: audience membership, its history and conversions as tables.

Config (`cohortsync.yml`)::

    destinations:
      warehouse:
        type: warehouse
        url: duckdb:///warehouse.duckdb        # a file, relative to the project folder
        # url: duckdb:////srv/data/wh.duckdb   # an absolute path (four slashes)
        # url: postgresql://cohortsync@db.internal:5432/analytics
        schema: cohortsync                     # optional (default cohortsync)
        table_prefix: ""                       # optional, e.g. "cs_"

Tables are created on first use when missing (an administrator may create them beforehand;
existing ones are used as they are). Times are `TIMESTAMPTZ`, identifiers are stored as given:
normalised (email lower-cased, phone E.164), not hashed, since this is the team's own warehouse.

`audience_members`: who is in each audience now. Primary key (audience, profile_id).
  audience TEXT, profile_id TEXT, holdout BOOLEAN (in the control group: delivered, flagged),
  user_id, email, phone, anonymous_id TEXT (from the latest add),
  entered_at (start of the current stay), updated_at (`at` of the latest change applied).
`audience_changes`: every change ever applied, once. Primary key change_id.
  change_id BIGINT, batch_id TEXT, audience TEXT, profile_id TEXT,
  operation TEXT ('add' | 'remove'), holdout BOOLEAN, at (when the change happened).
`audience_stays` (view): one row per stay, from `audience_changes` in change_id order.
  audience, profile_id, holdout (at entry), entered_at, exited_at (NULL while still in),
  entry_change_id. Repeated adds (a holdout or identifier update) do not open a new stay.
`conversions`: conversion signals, once each. Primary key conversion_id.
  conversion_id BIGINT, batch_id TEXT, message_id TEXT, name TEXT (e.g. Purchase),
  event TEXT (e.g. order_completed), at, profile_id TEXT, value DOUBLE PRECISION,
  currency TEXT, user_id, email, phone, anonymous_id TEXT, properties JSON (JSONB on Postgres).
`applied_batches`: every batch written. Primary key batch_id.
  batch_id TEXT, kind TEXT ('audience' | 'conversions'), applied_at (the writer's clock),
  rows INTEGER (records the batch carried).

Writes are idempotent (a resent batch or change is written once): each batch is one
transaction that first claims its batch_id in `applied_batches` (a batch already there is
acknowledged without writing), stages its rows in bulk (Arrow on DuckDB, COPY on Postgres),
logs only change_ids not logged before, and merges those into `audience_members` in change_id
order: an add upserts the member (holdout and identifiers updated), a remove deletes it.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import orjson
from pydantic import ConfigDict, Field, field_validator

from cohortsync.destinations.base import (
    ADD,
    REMOVE,
    Batch,
    BatchResult,
    Capabilities,
    Change,
    Conversion,
    ConversionBatch,
    Destination,
    DestinationConfig,
    DestinationContext,
)
from cohortsync.destinations.warehouse_schema import (
    CHANGE_COLUMNS,
    CONVERSION_COLUMNS,
    IDENTIFIER_COLUMNS,
    MAX_PREFIX,
    NAME,
    STAGE_CHANGES,
    STAGE_CONVERSIONS,
    STAGE_MEMBERS,
    Column,
    Dialect,
    Names,
    claim_batch_sql,
    ddl,
    final_members_sql,
    insert_changes_sql,
    insert_conversions_sql,
    merge_members_sql,
)

T = TypeVar("T")
SAMPLE = 5
_SCHEMES = ("duckdb://", "postgresql://", "postgres://")


class WarehouseConfig(DestinationConfig):
    """Where the tables live: a DuckDB file or a Postgres database, a schema, a table prefix."""

    # A URL may carry a password: errors never echo input. `schema` may also be written
    # `db_schema` (the attribute's name, since `schema` is taken on pydantic models).
    model_config = ConfigDict(hide_input_in_errors=True, validate_by_name=True)
    type: Literal["warehouse"] = "warehouse"
    url: str
    db_schema: str = Field(default="cohortsync", alias="schema")
    table_prefix: str = ""

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        """A DuckDB file or a Postgres URL; the message never echoes the URL (passwords)."""
        if not url.startswith(_SCHEMES):
            scheme = url.split("://", 1)[0] + "://" if "://" in url else "a path"
            raise ValueError(
                f"url must start with duckdb:/// (a DuckDB file, relative to the project folder)"
                f" or postgresql:// (a Postgres database), not {scheme}"
            )
        if url.startswith("duckdb://") and not url.removeprefix("duckdb://").strip("/"):
            raise ValueError("url names no DuckDB file: write duckdb:///warehouse.duckdb")
        return url

    @field_validator("db_schema")
    @classmethod
    def _plain_schema(cls, value: str) -> str:
        """A name that needs no escaping and fits Postgres's 63-byte limit."""
        if not NAME.fullmatch(value) or len(value) > 63:
            raise ValueError(
                f"schema {value!r} must be a plain SQL name: letters, digits and _, "
                "not starting with a digit, at most 63 characters"
            )
        return value

    @field_validator("table_prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        """Empty, or a prefix that keeps every table name a plain SQL name."""
        if value and (not NAME.fullmatch(value) or len(value) > MAX_PREFIX):
            raise ValueError(
                f"table_prefix {value!r} must be letters, digits and _, not starting with a "
                f"digit, at most {MAX_PREFIX} characters"
            )
        return value


class Session(Protocol):
    """One engine's connection as the write logic uses it (DuckDB file or Postgres)."""

    dialect: Dialect

    def transaction(self, work: Callable[[Any], T]) -> T: ...
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def stage(
        self, name: str, columns: Sequence[Column], data: Mapping[str, list[Any]]
    ) -> None: ...
    def stage_select(self, name: str, select: str) -> None: ...
    def drop(self, name: str) -> None: ...
    def close(self) -> None: ...


def duckdb_path(url: str, project_dir: Path) -> Path:
    """`duckdb:///rel/x.duckdb` → project_dir/rel/x.duckdb; `duckdb:////abs/x.duckdb` → /abs/…"""
    rest = url.removeprefix("duckdb://")
    rest = rest.removeprefix("/")
    path = Path(rest).expanduser()
    return path if path.is_absolute() else project_dir / path


def open_session(config: WarehouseConfig, context: DestinationContext) -> Session:
    """A lazy session for the configured engine (nothing connects until the first write)."""
    what = f"destination {context.name!r}"
    if config.url.startswith("duckdb://"):
        from cohortsync.destinations.warehouse_duckdb import DuckDBSession

        return DuckDBSession(duckdb_path(config.url, context.project_dir), what)
    from cohortsync.destinations.warehouse_postgres import PostgresSession

    return PostgresSession(config.url, what)


def shown_database(config: WarehouseConfig, context: DestinationContext) -> dict[str, str]:
    """The engine and the database as people may see it: a resolved file path, or the URL
    without its password."""
    if config.url.startswith("duckdb://"):
        return {"engine": "duckdb", "database": str(duckdb_path(config.url, context.project_dir))}
    from cohortsync.destinations.warehouse_postgres import redact_url

    return {"engine": "postgres", "database": redact_url(config.url)}


def utc(moment: datetime) -> datetime:
    """A timezone-aware time; naive times are taken as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def prepare_changes(changes: Sequence[Change]) -> tuple[list[Change], dict[int, str]]:
    """The changes in change_id order, each id once, and the records refused with why."""
    rejected: dict[int, str] = {}
    unique: dict[int, Change] = {}
    for change in changes:
        if change.op not in (ADD, REMOVE):
            rejected[change.change_id] = f"operation must be add or remove, not {change.op!r}"
        elif not change.audience or not change.profile_id:
            rejected[change.change_id] = "a change needs an audience and a profile_id"
        else:
            unique.setdefault(change.change_id, change)
    return [unique[key] for key in sorted(unique)], rejected


def change_rows(batch_id: str, changes: Sequence[Change]) -> dict[str, list[Any]]:
    """The staged columns of a batch of changes (column name → values)."""
    data: dict[str, list[Any]] = {c.name: [] for c in CHANGE_COLUMNS}
    for change in changes:
        data["change_id"].append(change.change_id)
        data["batch_id"].append(batch_id)
        data["audience"].append(change.audience)
        data["profile_id"].append(change.profile_id)
        data["operation"].append(change.op)
        data["holdout"].append(bool(change.holdout))
        data["at"].append(utc(change.at))
        for kind in IDENTIFIER_COLUMNS:
            data[kind].append(change.identifiers.get(kind) or None)
    return data


def conversion_rows(batch_id: str, conversions: Sequence[Conversion]) -> dict[str, list[Any]]:
    """The staged columns of a batch of conversions, each conversion_id once."""
    unique: dict[int, Conversion] = {}
    for conversion in conversions:
        unique.setdefault(conversion.conversion_id, conversion)
    data: dict[str, list[Any]] = {c.name: [] for c in CONVERSION_COLUMNS}
    for conversion in unique.values():
        data["conversion_id"].append(conversion.conversion_id)
        data["batch_id"].append(batch_id)
        data["message_id"].append(conversion.message_id)
        data["name"].append(conversion.name)
        data["event"].append(conversion.event)
        data["at"].append(utc(conversion.at))
        data["profile_id"].append(conversion.profile_id)
        data["value"].append(None if conversion.value is None else float(conversion.value))
        data["currency"].append(conversion.currency)
        for kind in IDENTIFIER_COLUMNS:
            data[kind].append(conversion.identifiers.get(kind) or None)
        data["properties"].append(orjson.dumps(dict(conversion.properties), default=str).decode())
    return data


def ensure_tables(session: Session, names: Names) -> None:
    """Create the schema, tables and view that do not exist yet."""
    dialect = session.dialect
    if dialect.name == "postgres":
        # Serialise creators: two workers racing on CREATE ... IF NOT EXISTS can still collide.
        key = zlib.crc32(f"cohortsync.warehouse:{names.schema}".encode())
        session.execute(f"SELECT pg_advisory_xact_lock({dialect.param})", (key,))
    p = dialect.param
    has_schema = session.fetch(
        f"SELECT 1 FROM information_schema.schemata WHERE schema_name = {p}", (names.schema,)
    )
    existing = {
        str(row[0])
        for row in session.fetch(
            f"SELECT table_name FROM information_schema.tables WHERE table_schema = {p}",
            (names.schema,),
        )
    }
    for base, statements in ddl(names, dialect):
        present = bool(has_schema) if base == "" else names.prefix + base in existing
        if not present:
            for statement in statements:
                session.execute(statement)


def write_changes(
    session: Session,
    names: Names,
    batch_id: str,
    data: Mapping[str, list[Any]],
    received: int,
    applied_at: datetime,
) -> int | None:
    """Write one batch of changes in the current transaction: the number of changes new to
    the log, or None when the batch had already been applied."""
    claim = claim_batch_sql(names, session.dialect)
    if session.execute(claim, (batch_id, "audience", utc(applied_at), received)) == 0:
        return None
    session.stage(STAGE_CHANGES, CHANGE_COLUMNS, data)
    written = session.execute(insert_changes_sql(names))
    session.stage_select(STAGE_MEMBERS, final_members_sql(names))
    for statement in merge_members_sql(names):
        session.execute(statement)
    session.drop(STAGE_MEMBERS)
    session.drop(STAGE_CHANGES)
    return written


def write_conversions(
    session: Session,
    names: Names,
    batch_id: str,
    data: Mapping[str, list[Any]],
    received: int,
    applied_at: datetime,
) -> int | None:
    """Write one batch of conversions: how many were new, or None if already applied."""
    claim = claim_batch_sql(names, session.dialect)
    if session.execute(claim, (batch_id, "conversions", utc(applied_at), received)) == 0:
        return None
    session.stage(STAGE_CONVERSIONS, CONVERSION_COLUMNS, data)
    written = session.execute(insert_conversions_sql(names))
    session.drop(STAGE_CONVERSIONS)
    return written


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with its times as ISO strings."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _sample(data: Mapping[str, list[Any]], skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The first rows of staged columns, as JSON-able dicts."""
    count = min(SAMPLE, len(next(iter(data.values()), [])))
    return [_jsonable({k: v[i] for k, v in data.items() if k not in skip}) for i in range(count)]


class WarehouseDestination(Destination[WarehouseConfig]):
    """Writes audience membership, its change log and conversions to DuckDB or Postgres."""

    kind: ClassVar[str] = "warehouse"
    config_model: ClassVar[type[DestinationConfig]] = WarehouseConfig
    capabilities = Capabilities(identifiers=IDENTIFIER_COLUMNS, conversions=True, max_batch=50_000)

    def __init__(self, config: DestinationConfig, context: DestinationContext) -> None:
        super().__init__(config, context)
        if self.settings.url.startswith("duckdb://"):
            self.capabilities = replace(self.capabilities, remote=False)  # a local file
        self.names = Names(self.settings.db_schema, self.settings.table_prefix)
        self._session = open_session(self.settings, context)
        self._ready = False
        self._lock = threading.Lock()

    def apply(self, batch: Batch) -> BatchResult:
        """Write a batch of changes once, in one transaction (a resent batch writes nothing)."""
        changes, rejected = prepare_changes(batch.changes)
        received = len(batch.changes)
        if not changes:
            return BatchResult(rejected=rejected, stats={"received": received, "written": 0})
        data = change_rows(batch.batch_id, changes)
        written = self._run(
            lambda s: write_changes(
                s, self.names, batch.batch_id, data, received, self.context.clock()
            )
        )
        return BatchResult(rejected=rejected, stats=self._stats(received, len(changes), written))

    def send_conversions(self, batch: ConversionBatch) -> BatchResult:
        """Store a batch of conversions, each conversion_id once."""
        received = len(batch.conversions)
        if not received:
            return BatchResult(stats={"received": 0, "written": 0})
        data = conversion_rows(batch.batch_id, batch.conversions)
        unique = len(data["conversion_id"])
        written = self._run(
            lambda s: write_conversions(
                s, self.names, batch.batch_id, data, received, self.context.clock()
            )
        )
        return BatchResult(stats=self._stats(received, unique, written))

    @staticmethod
    def _stats(received: int, unique: int, written: int | None) -> dict[str, int]:
        """What the batch did: records received, rows written, duplicates or a skipped resend."""
        if written is None:
            return {"received": received, "written": 0, "already_applied": 1}
        return {"received": received, "written": written, "duplicates": unique - written}

    def _run(self, work: Callable[[Session], T]) -> T:
        """Create missing tables once, then run `work` in one transaction."""
        with self._lock:
            if not self._ready:
                self._session.transaction(lambda s: ensure_tables(s, self.names))
                self._ready = True
            return self._session.transaction(work)

    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        """The writes one batch would make (tables, rows per operation, first rows with their
        identifiers); connects to nothing. Rows already written would be skipped."""
        names = self.names
        head: dict[str, Any] = {
            "destination": self.context.name,
            **shown_database(self.settings, self.context),
            "batch_id": batch.batch_id,
        }
        if isinstance(batch, ConversionBatch):
            data = conversion_rows(batch.batch_id, batch.conversions)
            count = len(data["conversion_id"])
            return [
                {
                    **head,
                    "writes": [
                        {"table": names.shown("conversions"), "operation": "insert", "rows": count},
                        {"table": names.shown("applied_batches"), "operation": "insert", "rows": 1},
                    ],
                    "sample": _sample(data, skip=("batch_id",)),
                }
            ]
        changes, rejected = prepare_changes(batch.changes)
        data = change_rows(batch.batch_id, changes)
        final: dict[tuple[str, str], str] = {}
        for change in changes:
            final[(change.audience, change.profile_id)] = change.op
        adds = sum(1 for op in final.values() if op == ADD)
        return [
            {
                **head,
                "audience": batch.audience,
                "operations": {
                    "add": sum(1 for c in changes if c.op == ADD),
                    "remove": sum(1 for c in changes if c.op == REMOVE),
                },
                "rejected": {str(k): v for k, v in rejected.items()},
                "writes": [
                    {
                        "table": names.shown("audience_changes"),
                        "operation": "insert",
                        "rows": len(changes),
                    },
                    {"table": names.shown("audience_members"), "operation": "upsert", "rows": adds},
                    {
                        "table": names.shown("audience_members"),
                        "operation": "delete",
                        "rows": len(final) - adds,
                    },
                    {"table": names.shown("applied_batches"), "operation": "insert", "rows": 1},
                ],
                "sample": _sample(data, skip=("batch_id",)),
            }
        ]

    def close(self) -> None:
        """Close the connection; a later write reopens it."""
        with self._lock:
            self._session.close()
            self._ready = False
