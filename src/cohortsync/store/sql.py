"""What a store lends the sync state machine: one statement text, two engines.

The outbox, claims, resolutions and membership history are written once (in `sync/`) as SQL
with `$name` parameters and a few dialect words in braces; each store renders them and
supplies what truly differs — how rows from Python reach a statement (an Arrow table DuckDB
scans in place, arrays Postgres unnests), how ids are numbered (a counter row, a sequence),
and the locks several Postgres processes need and one DuckDB process does not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol

import orjson
import pyarrow as pa

Dialect = Literal["duckdb", "postgres"]
SqlType = Literal["text", "bigint", "boolean", "timestamptz", "double"]

_PARAM = re.compile(r"\$([a-z_][a-z0-9_]*)")


@dataclass(frozen=True)
class Words:
    """The dialect words a statement template names in braces."""

    json: str
    """The type identifiers and conversions are stored as (`{json}`)."""
    json_object_agg: str
    """`{json_object_agg}(key, value)`: one JSON object of a group's pairs."""
    json_object: str
    """`{json_object}('k', v, …)`: one JSON object of its arguments."""
    json_text: str
    """Cast that makes a JSON value text (`{json_text}`), for DuckDB's VARCHAR columns."""
    for_update: str
    """Locks the rows a statement reads until the transaction ends (nothing on DuckDB)."""
    skip_locked: str
    """Locks the rows read, skipping those another transaction holds (nothing on DuckDB)."""


WORDS: dict[str, Words] = {
    "duckdb": Words(
        json="JSON",
        json_object_agg="json_group_object",
        json_object="json_object",
        json_text="::VARCHAR",
        for_update="",
        skip_locked="",
    ),
    "postgres": Words(
        json="jsonb",
        json_object_agg="jsonb_object_agg",
        json_object="jsonb_build_object",
        json_text="",
        for_update=" FOR UPDATE",
        skip_locked=" FOR UPDATE SKIP LOCKED",
    ),
}


@lru_cache(maxsize=512)
def render(template: str, dialect: Dialect, **fill: str) -> tuple[str, tuple[str, ...]]:
    """The statement for `dialect`: dialect words and `fill` in, `$name` parameters in the
    engine's style; also the parameter names it uses (extra ones are left out when run)."""
    words = WORDS[dialect]
    text = template.format(**{k: getattr(words, k) for k in Words.__dataclass_fields__}, **fill)
    names = tuple(dict.fromkeys(_PARAM.findall(text)))
    if dialect == "postgres":
        text = _PARAM.sub(lambda m: f"%({m.group(1)})s", text.replace("%", "%%"))
    return text, names


def as_json(value: Any) -> dict[str, Any]:
    """A JSON object as read back: text on DuckDB, already decoded on Postgres."""
    if value is None:
        return {}
    if isinstance(value, str | bytes):
        loaded = orjson.loads(value)
        return loaded if isinstance(loaded, dict) else {}
    return dict(value)


def json_text(value: Mapping[str, Any]) -> str:
    """A JSON object as bound to a statement (both engines cast text to their JSON type)."""
    return orjson.dumps(dict(value)).decode()


class Tx(Protocol):
    """One transaction of the store, as the sync state machine drives it."""

    dialect: Dialect

    def run(
        self, template: str, params: Mapping[str, Any] | None = None, **fill: str
    ) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (none for a statement that returns none)."""
        ...

    def changed(self, template: str, params: Mapping[str, Any] | None = None, **fill: str) -> int:
        """Run one writing statement; how many rows it changed."""
        ...

    def rows(
        self, name: str, columns: Sequence[tuple[str, SqlType]], data: Sequence[Sequence[Any]]
    ) -> str:
        """Rows from Python as a relation the transaction's next statements can read as `name`:
        SQL for a FROM clause, which names it `name` (give it no other alias); `data` holds one
        list per column."""
        ...

    def among(self, name: str, values: Sequence[Any], kind: SqlType = "text") -> str:
        """SQL completing `expr …`: true where expr is one of `values` (bound as `$name`), in
        the form each engine plans best (an index probe per value on Postgres)."""
        ...

    def keep(
        self, name: str, template: str, params: Mapping[str, Any] | None = None, **fill: str
    ) -> str:
        """The rows of a SELECT kept for the transaction's next statements under `name` (a
        relation name for a FROM clause), for engines that cannot write from a CTE."""
        ...

    def table(self, name: str, columns: Sequence[tuple[str, SqlType]], data: pa.Table) -> str:
        """An Arrow table as a relation named `name` for the transaction's next statements
        (the bulk path: scanned in place on DuckDB, copied into an analysed temp table on
        Postgres); returns the relation's name."""
        ...

    def counted(
        self, template: str, params: Mapping[str, Any] | None = None, **fill: str
    ) -> dict[tuple[Any, ...], int]:
        """Run one writing statement ending in `RETURNING cols`: how many rows it changed per
        distinct value of those columns (what was written, not what was meant to be)."""
        ...

    def next_id(self, counter: str) -> int:
        """The next id of `counter` (ids only grow)."""
        ...

    def lock(self, *keys: str, shared: bool = False) -> None:
        """Hold named locks until the transaction ends (other processes wait on the same names)."""
        ...

    def hold(self, key: str) -> bool:
        """Take a lock kept past the transaction, until `release`; False when held elsewhere."""
        ...

    def number(self, counter: str, order: str) -> str:
        """SQL numbering the rows an INSERT … SELECT writes, in `order`, from `counter`'s next
        id; call `numbered` with the count written, in the same transaction."""
        ...

    def numbered(self, counter: str, count: int) -> None:
        """`count` ids of `counter` were used by the last `number`."""
        ...


class SqlStore(Protocol):
    """The part of a store the sync state machine works through."""

    dialect: Dialect

    def transaction(self) -> AbstractContextManager[Tx]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        ...

    def release(self, key: str) -> None:
        """Let go of what `Tx.hold` took (after the new state is committed)."""
        ...

    def reading(self) -> AbstractContextManager[Tx]:
        """A transaction that reads one snapshot and writes nothing (on Postgres REPEATABLE
        READ, READ ONLY; on DuckDB a transaction under the store's lock like any other)."""
        ...


def columns_of(
    columns: Sequence[tuple[str, SqlType]], data: Sequence[Sequence[Any]]
) -> Iterator[tuple[str, SqlType, Sequence[Any]]]:
    """Each column's name, type and values, checked to be as many as the names."""
    if len(columns) != len(data):
        raise ValueError(f"{len(columns)} columns named, {len(data)} given")
    for (name, kind), values in zip(columns, data, strict=True):
        yield name, kind, values


def bound(
    names: Sequence[str], lent: Mapping[str, Any], params: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The values of a statement's `$names`: from `params`, else from what the transaction
    lent its `rows` and `among` relations."""
    given = {**lent, **(params or {})} if lent else (params or {})
    return {n: given[n] for n in names}


def transposed(rows: Iterable[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column, for `Tx.rows` (`width` columns, also when no rows)."""
    columns: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns
