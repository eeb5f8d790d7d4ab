"""Files destination: hashed audience files, ready for an ad platform's manual customer-list upload.

For every audience it keeps, under `<path>/<audience>/`:
- `snapshot.csv` / `snapshot.parquet`: every current member (upload as a full replace);
- `delta-<batch id>.csv` / `.parquet`: one batch's adds and removes, with an `op` column
  (`add` | `remove`) first (upload the adds as an append and the removes as a removal);
- `_state.parquet`: the member set behind the snapshot (hashed, keyed by profile id) and the ids
  of the batches already applied. Not an upload file.

Identifiers are normalised the platform's way and SHA-256 hashed (`destinations/hashing.py`);
no raw email or phone is ever written. Column layout per `platform`:

- `meta`: `email`, `phone`, `extern_id` (Meta's customer-file headers). Phone hashed as digits
  with country code and no `+`; `extern_id` is the hashed `user_id`.
- `google`: `Email`, `Phone` (Customer Match contact-info template). Phone hashed in E.164 with
  the `+`; user ids belong in a separate list type, so they are left out.
- `tiktok`: `EMAIL_SHA256`, `PHONE_SHA256` (TikTok's `calculate_type` names). Phone hashed as
  digits, no `+`; TikTok refuses files of fewer than 1,000 rows.

A missing or unusable identifier is an empty cell. Rows are ordered by profile id, so the same
members always give the same files. Every file is written to a temporary name and moved into
place, and the state last: re-applying a batch, even after a crash half-way, writes the same
files, and a batch already applied changes nothing. Holdout members are never written.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from cohortsync.destinations.base import (
    ADD,
    Batch,
    BatchResult,
    Capabilities,
    ConversionBatch,
    Destination,
    DestinationConfig,
    DestinationContext,
    DryRun,
    PermanentError,
)
from cohortsync.destinations.hashing import hash_identifier

Platform = Literal["meta", "google", "tiktok"]
Format = Literal["csv", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "parquet")

LAYOUTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "meta": (("email", "email", "email"), ("phone", "phone", "phone"),
             ("extern_id", "user_id", "external_id")),
    "google": (("Email", "email", "email"), ("Phone", "phone", "phone")),
    "tiktok": (("EMAIL_SHA256", "email", "email"), ("PHONE_SHA256", "phone", "phone")),
}  # fmt: skip
"""Per platform: (column header, cohortsync identifier kind, hashing kind)."""
STATE_FILE = "_state.parquet"
KEEP_APPLIED = 10_000
"""How many applied batch ids the state remembers (a resend comes long before that many)."""
MINIMUMS: dict[str, int] = {"meta": 100, "google": 100, "tiktok": 1_000}
"""Fewest matched people each platform serves a customer-list audience to."""
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_META_APPLIED = b"cohortsync.applied"
_META_PLATFORM = b"cohortsync.platform"


class FilesConfig(DestinationConfig):
    """`type: files`: the output folder (relative to the project folder unless absolute), the
    file formats, and the ad platform the files are for."""

    type: Literal["files"] = "files"
    path: str
    formats: list[Format] = Field(default_factory=lambda: list(FORMATS), min_length=1)
    platform: Platform = "meta"

    def usable_minimum(self) -> int | None:
        """The platform's minimum audience size (Meta and Google 100, TikTok 1,000)."""
        return MINIMUMS[self.platform]

    @field_validator("path")
    @classmethod
    def _present(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("path is empty: name a folder, e.g. path: exports/audiences")
        return value

    @field_validator("formats")
    @classmethod
    def _unique(cls, value: list[Format]) -> list[Format]:
        return sorted(set(value))


@dataclass(frozen=True)
class _Plan:
    """What applying one batch to one audience would write."""

    folder: Path
    batch_name: str
    already_applied: bool
    delta: list[tuple[str, ...]]
    members: dict[str, tuple[str, ...]]
    applied: list[str]
    rejected: dict[int, str]
    added: int
    removed: int


class FilesDestination(Destination[FilesConfig]):
    """Writes hashed snapshot and delta files per audience for manual upload to an ad platform."""

    kind: ClassVar[str] = "files"
    config_model: ClassVar[type[DestinationConfig]] = FilesConfig
    capabilities = Capabilities(
        identifiers=("email", "phone", "user_id"),
        max_batch=100_000,
        ad_platform=True,
        hashed=True,
        remote=False,
    )

    def __init__(self, config: DestinationConfig, context: DestinationContext) -> None:
        super().__init__(config, context)
        self.layout = LAYOUTS[self.settings.platform]
        self.columns = tuple(column for column, _, _ in self.layout)
        root = Path(self.settings.path).expanduser()
        self.root = root if root.is_absolute() else context.project_dir / root

    def apply(self, batch: Batch) -> BatchResult:
        """Write this batch's delta, the audience's new snapshot, then the state."""
        plan = self._plan(batch)
        stats = {"added": plan.added, "removed": plan.removed, "members": len(plan.members)}
        if plan.already_applied:
            return BatchResult(rejected=plan.rejected, stats={**stats, "files": 0})
        try:
            plan.folder.mkdir(parents=True, exist_ok=True)
            written = 0
            for name, header, rows in self._outputs(plan):
                for fmt in self.settings.formats:
                    _write(plan.folder / f"{name}.{fmt}", fmt, header, rows)
                    written += 1
            _write_state(
                plan.folder / STATE_FILE, self.columns, plan.members, plan.applied,
                self.settings.platform,
            )  # fmt: skip
        except OSError as exc:
            raise PermanentError(
                f"files {self.context.name}: cannot write to {plan.folder}: {exc.strerror} "
                "(check that the folder exists and is writable)"
            ) from None
        return BatchResult(rejected=plan.rejected, stats={**stats, "files": written})

    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        """The files `apply` would write and their row counts; nothing is written."""
        return self.preview(batch).requests

    def preview(self, batch: Batch | ConversionBatch) -> DryRun:
        """The files `apply` would write, and the members it would leave out with why."""
        if not isinstance(batch, Batch):
            return DryRun([])
        plan = self._plan(batch)
        if plan.already_applied:
            return DryRun([], plan.rejected)
        return DryRun(self._writes(plan), plan.rejected)

    def _writes(self, plan: _Plan) -> list[dict[str, Any]]:
        return [
            {
                "write": str(plan.folder / f"{name}.{fmt}"),
                "format": fmt,
                "rows": len(rows),
                "columns": list(header),
            }
            for name, header, rows in self._outputs(plan)
            for fmt in self.settings.formats
        ]

    def _outputs(self, plan: _Plan) -> list[tuple[str, tuple[str, ...], list[tuple[str, ...]]]]:
        snapshot = [plan.members[profile] for profile in sorted(plan.members)]
        return [
            (f"delta-{plan.batch_name}", ("op", *self.columns), plan.delta),
            ("snapshot", self.columns, snapshot),
        ]

    def _plan(self, batch: Batch) -> _Plan:
        folder = self.root / _audience_folder(batch.audience)
        members, applied = _read_state(
            folder / STATE_FILE, self.columns, self.settings.platform, self.context.name
        )
        already_applied = batch.batch_id in applied
        delta: list[tuple[str, ...]] = []
        rejected: dict[int, str] = {}
        added = removed = 0
        for change in batch.changes:
            if change.holdout:
                rejected[change.change_id] = (
                    "holdout member: ad platforms never receive the control group"
                )
                continue
            row = self._row(change.identifiers)
            if not any(row) and change.op != ADD:
                row = members.get(change.profile_id, row)
            if not any(row):
                rejected[change.change_id] = self._unusable()
                continue
            delta.append((change.op, *row))
            if already_applied:
                continue
            if change.op == ADD:
                members[change.profile_id] = row
                added += 1
            else:
                members.pop(change.profile_id, None)
                removed += 1
        return _Plan(
            folder=folder,
            batch_name=_file_safe(batch.batch_id),
            already_applied=already_applied,
            delta=delta,
            members=members,
            applied=[*applied, batch.batch_id][-KEEP_APPLIED:],
            rejected=rejected,
            added=added,
            removed=removed,
        )

    def _row(self, identifiers: Mapping[str, str]) -> tuple[str, ...]:
        """The hashed cells of one member in this platform's layout ("" where unknown)."""
        cells = []
        for _, kind, hashing_kind in self.layout:
            value = identifiers.get(kind)
            hashed = hash_identifier(hashing_kind, value, self.settings.platform) if value else None
            cells.append(hashed or "")
        return tuple(cells)

    def _unusable(self) -> str:
        kinds = " or ".join(kind for _, kind, _ in self.layout)
        return f"no valid {kinds} for a {self.settings.platform} customer file"


def _audience_folder(audience: str) -> str:
    if not audience or audience in (".", "..") or _SAFE.search(audience):
        raise PermanentError(
            f"audience name {audience!r} cannot name a folder: use letters, digits, '.', '_', '-'"
        )
    return audience


def _file_safe(batch_id: str) -> str:
    """The batch id as a file-name part; ids with other characters get a short hash suffix."""
    safe = _SAFE.sub("_", batch_id)
    if safe != batch_id or not safe:
        safe += "-" + hashlib.sha256(batch_id.encode()).hexdigest()[:8]
    return safe


def _read_state(
    path: Path, columns: tuple[str, ...], platform: str, name: str
) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """The members (profile id → hashed row) and applied batch ids; empty when new."""
    if not path.exists():
        return {}, []
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise PermanentError(
            f"files {name}: state file {path} is unreadable ({type(exc).__name__}): restore it "
            "or delete the audience's folder to start from an empty audience"
        ) from None
    metadata = table.schema.metadata or {}
    written_for = metadata.get(_META_PLATFORM, b"").decode()
    if written_for != platform or tuple(table.column_names) != ("profile_id", *columns):
        raise PermanentError(
            f"files {name}: {path.parent} holds files for platform {written_for or 'unknown'}, "
            f"not {platform}: point path at another folder for {platform}"
        )
    profiles = table.column("profile_id").to_pylist()
    cells = [table.column(column).to_pylist() for column in columns]
    members = {
        profile: tuple(value or "" for value in values)
        for profile, *values in zip(profiles, *cells, strict=True)
    }
    applied = json.loads(metadata.get(_META_APPLIED, b"[]"))
    return members, [str(batch_id) for batch_id in applied]


def _write_state(
    path: Path,
    columns: tuple[str, ...],
    members: Mapping[str, tuple[str, ...]],
    applied: list[str],
    platform: str,
) -> None:
    profiles = sorted(members)
    table = _table(("profile_id", *columns), [(p, *members[p]) for p in profiles])
    table = table.replace_schema_metadata(
        {_META_PLATFORM: platform.encode(), _META_APPLIED: json.dumps(applied).encode()}
    )
    _atomic(path, lambda handle: pq.write_table(table, handle))


def _table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> pa.Table:
    listed = list(rows)
    return pa.table(
        {
            column: pa.array([row[i] or None for row in listed], pa.string())
            for i, column in enumerate(header)
        }
    )


def _write(path: Path, fmt: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    if fmt == "parquet":
        table = _table(header, rows)
        _atomic(path, lambda handle: pq.write_table(table, handle))
        return
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = text.getvalue().encode("utf-8")
    _atomic(path, lambda handle: handle.write(data))


def _atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file in the same folder, flush it to disk, then move it in."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
