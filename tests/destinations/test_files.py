"""The files destination: exact hashed snapshots and deltas per audience, idempotent per batch."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from cohortsync.destinations.base import Change, DestinationContext, PermanentError
from cohortsync.destinations.files import FilesConfig, FilesDestination
from tests.destinations.conformance import Conformance, Records, Subject

AUDIENCE = "cio_lapsed_75d"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# §9.1 vectors
MARY = "f1904cf1a9d73a55fa5de0ac823c4403ded71afd4c3248d00bdcd0866552bb79"  # mary@example.com
JOHN = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"  # john_smith@gmail.com
META_PHONE = "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"  # 16505551212
GOOGLE_PHONE = "1e231c66011e7a2d867a9cfae267a6aff103cf4913640b6e71a99850fc0ffbc8"  # +16505551212
DANA = "07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3"  # dana@example.com
TIKTOK_PHONE = "65b7e6dcf6f4310f8d7cbfbd78289a753062fb054d6664fb9aaac5df66a422d4"  # 37493828222
USER_123 = "fcdec6df4d44dbc637c7c5b58efface52a7f8a88535423430255be0bb89bedd8"  # user-123


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make(tmp_path: Path, **settings: Any) -> FilesDestination:
    config = FilesConfig.model_validate({"type": "files", "path": "exports", **settings})
    context = DestinationContext(
        name="files", project_dir=tmp_path, http=httpx.Client(), clock=lambda: T0
    )
    return FilesDestination(config, context)


RECORDS = Records(audience=AUDIENCE, start=T0, identifiers=None)
change = RECORDS.change
batch = RECORDS.batch


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))


def read_parquet(path: Path) -> list[list[str]]:
    table = pq.read_table(path)
    rows = [[value or "" for value in row.values()] for row in table.to_pylist()]
    return [table.column_names, *rows]


def folder(tmp_path: Path) -> Path:
    return tmp_path / "exports" / AUDIENCE


def files_bytes(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder(tmp_path).iterdir())}


FIRST = batch(
    change(1, profile="p-b", email="mary@example.com", phone="+16505551212", user_id="user-123"),
    change(2, profile="p-a", email="dana@example.com"),
    change(3, profile="p-c", phone="+14155550134"),
    batch_id="b1",
)
SECOND = batch(
    change(4, "remove", profile="p-a", email="dana@example.com"),
    change(5, profile="p-d", email="  John_Smith@Gmail.com "),
    batch_id="b2",
)


def test_first_batch_writes_exact_meta_snapshot_and_delta(tmp_path: Path) -> None:
    result = make(tmp_path).apply(FIRST)
    assert result.rejected == {}
    assert result.stats == {"added": 3, "removed": 0, "members": 3, "files": 4}
    out = folder(tmp_path)
    snapshot = [
        ["email", "phone", "extern_id"],
        [DANA, "", ""],
        [MARY, META_PHONE, USER_123],
        ["", sha("14155550134"), ""],
    ]
    assert read_csv(out / "snapshot.csv") == snapshot
    assert read_parquet(out / "snapshot.parquet") == snapshot
    delta = [
        ["op", "email", "phone", "extern_id"],
        ["add", MARY, META_PHONE, USER_123],
        ["add", DANA, "", ""],
        ["add", "", sha("14155550134"), ""],
    ]
    assert read_csv(out / "delta-b1.csv") == delta
    assert read_parquet(out / "delta-b1.parquet") == delta


def test_adds_and_removes_keep_the_snapshot_exact(tmp_path: Path) -> None:
    files = make(tmp_path)
    files.apply(FIRST)
    result = files.apply(SECOND)
    assert result.stats == {"added": 1, "removed": 1, "members": 3, "files": 4}
    out = folder(tmp_path)
    assert read_csv(out / "snapshot.csv") == [
        ["email", "phone", "extern_id"],
        [MARY, META_PHONE, USER_123],
        ["", sha("14155550134"), ""],
        [JOHN, "", ""],
    ]
    assert read_csv(out / "delta-b2.csv") == [
        ["op", "email", "phone", "extern_id"],
        ["remove", DANA, "", ""],
        ["add", JOHN, "", ""],
    ]
    assert read_csv(out / "delta-b1.csv")[1][0] == "add"
    leaving = [change(10 + i, "remove", profile=f"p-{p}") for i, p in enumerate("bcd")]
    files.apply(batch(*leaving, batch_id="b3"))
    assert read_csv(out / "snapshot.csv") == [["email", "phone", "extern_id"]]
    assert read_parquet(out / "snapshot.parquet") == [["email", "phone", "extern_id"]]


def test_a_remove_without_identifiers_uses_those_given_on_the_add(tmp_path: Path) -> None:
    files = make(tmp_path)
    files.apply(FIRST)
    result = files.apply(batch(change(4, "remove", profile="p-b"), batch_id="b2"))
    assert result.rejected == {}
    assert read_csv(folder(tmp_path) / "delta-b2.csv")[1] == ["remove", MARY, META_PHONE, USER_123]


def test_reapplying_a_batch_changes_nothing(tmp_path: Path) -> None:
    files = make(tmp_path)
    files.apply(FIRST)
    files.apply(SECOND)
    before = files_bytes(tmp_path)
    again = files.apply(FIRST)
    assert again.stats["files"] == 0
    files.apply(SECOND)
    assert files_bytes(tmp_path) == before
    assert make(tmp_path).dry_run(FIRST) == []


def test_reapplying_after_a_crash_before_the_state_was_saved_writes_the_same_files(
    tmp_path: Path,
) -> None:
    files = make(tmp_path)
    files.apply(FIRST)
    state = folder(tmp_path) / "_state.parquet"
    saved = tmp_path / "state-before-b2.parquet"
    shutil.copy(state, saved)
    files.apply(SECOND)
    complete = files_bytes(tmp_path)
    shutil.copy(saved, state)  # as if the process died after the delta and snapshot were written
    result = files.apply(SECOND)
    assert result.stats == {"added": 1, "removed": 1, "members": 3, "files": 4}
    assert {k: v for k, v in files_bytes(tmp_path).items() if k != "_state.parquet"} == {
        k: v for k, v in complete.items() if k != "_state.parquet"
    }
    assert files.apply(SECOND).stats["files"] == 0


@pytest.mark.parametrize(
    ("platform", "header", "row"),
    [
        ("meta", ["email", "phone", "extern_id"], [MARY, META_PHONE, USER_123]),
        ("google", ["Email", "Phone"], [MARY, GOOGLE_PHONE]),
        ("tiktok", ["EMAIL_SHA256", "PHONE_SHA256"], [MARY, META_PHONE]),
    ],
)
def test_each_platform_gets_its_own_layout_and_phone_rule(
    tmp_path: Path, platform: str, header: list[str], row: list[str]
) -> None:
    mary = change(
        1, profile="p-1", email="Mary@Example.com", phone="+1 (650) 555-1212", user_id="user-123"
    )
    make(tmp_path, platform=platform).apply(batch(mary, batch_id="b1"))
    assert read_csv(folder(tmp_path) / "snapshot.csv") == [header, row]


def test_tiktok_phone_vector(tmp_path: Path) -> None:
    sent = batch(change(1, profile="p-1", phone="+374 93 828222"), batch_id="b1")
    make(tmp_path, platform="tiktok").apply(sent)
    assert read_csv(folder(tmp_path) / "snapshot.csv")[1] == ["", TIKTOK_PHONE]


def test_google_with_only_a_user_id_is_rejected(tmp_path: Path) -> None:
    sent = batch(
        change(1, profile="p-1", user_id="u1"),
        change(2, profile="p-2", email="a@b.co"),
        batch_id="b1",
    )
    result = make(tmp_path, platform="google").apply(sent)
    assert result.rejected == {1: "no valid email or phone for a google customer file"}
    assert len(read_csv(folder(tmp_path) / "snapshot.csv")) == 2


def test_holdout_and_unusable_changes_are_rejected_and_not_written(tmp_path: Path) -> None:
    sent = batch(
        change(1, profile="p-1", holdout=True, email="hold@example.com"),
        change(2, profile="p-2", anonymous_id="anon-2"),
        change(3, profile="p-3", email="not an email"),
        change(4, profile="p-4", email="ok@example.com"),
        batch_id="b1",
    )
    result = make(tmp_path).apply(sent)
    assert result.rejected == {
        1: "holdout member: ad platforms never receive the control group",
        2: "no valid email or phone or user_id for a meta customer file",
        3: "no valid email or phone or user_id for a meta customer file",
    }
    assert read_csv(folder(tmp_path) / "snapshot.csv")[1:] == [[sha("ok@example.com"), "", ""]]


def test_no_raw_identifier_is_ever_written(tmp_path: Path) -> None:
    files = make(tmp_path)
    files.apply(FIRST)
    files.apply(SECOND)
    for content in files_bytes(tmp_path).values():
        for raw in (
            b"mary@example.com",
            b"dana@example.com",
            b"6505551212",
            b"john_smith",
            b"user-123",
        ):
            assert raw not in content.lower()


def test_dry_run_describes_files_and_row_counts_and_writes_nothing(tmp_path: Path) -> None:
    files = make(tmp_path)
    files.apply(FIRST)
    before = files_bytes(tmp_path)
    described = files.dry_run(SECOND)
    out = folder(tmp_path)
    assert described == [
        {"write": str(out / "delta-b2.csv"), "format": "csv", "rows": 2,
         "columns": ["op", "email", "phone", "extern_id"]},
        {"write": str(out / "delta-b2.parquet"), "format": "parquet", "rows": 2,
         "columns": ["op", "email", "phone", "extern_id"]},
        {"write": str(out / "snapshot.csv"), "format": "csv", "rows": 3,
         "columns": ["email", "phone", "extern_id"]},
        {"write": str(out / "snapshot.parquet"), "format": "parquet", "rows": 3,
         "columns": ["email", "phone", "extern_id"]},
    ]  # fmt: skip
    assert files_bytes(tmp_path) == before
    assert "john" not in json.dumps(described).lower()


def test_only_the_requested_formats_are_written(tmp_path: Path) -> None:
    make(tmp_path, formats=["csv"]).apply(FIRST)
    assert sorted(p.name for p in folder(tmp_path).iterdir()) == [
        "_state.parquet",
        "delta-b1.csv",
        "snapshot.csv",
    ]


def test_batch_ids_that_are_not_file_names_are_made_safe(tmp_path: Path) -> None:
    make(tmp_path, formats=["csv"]).apply(batch(*FIRST.changes, batch_id="dest:7/aud"))
    deltas = [p.name for p in folder(tmp_path).glob("delta-*")]
    assert len(deltas) == 1
    assert deltas[0].startswith("delta-dest_7_aud-")


def test_absolute_path_is_used_as_given(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    make(tmp_path / "project", path=str(target)).apply(FIRST)
    assert (target / AUDIENCE / "snapshot.csv").exists()


def test_changing_platform_on_an_existing_folder_is_refused(tmp_path: Path) -> None:
    make(tmp_path).apply(FIRST)
    with pytest.raises(PermanentError, match="holds files for platform meta, not google"):
        make(tmp_path, platform="google").apply(SECOND)


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "exports").write_text("a file, not a folder")
    with pytest.raises(PermanentError, match="cannot write to"):
        make(tmp_path).apply(FIRST)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"formats": ["xlsx"]}, "csv"),
        ({"formats": []}, "at least 1"),
        ({"platform": "snap"}, "meta"),
        ({"path": " "}, "path is empty"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        FilesConfig.model_validate({"path": "exports", **settings})


# --- the destination conformance suite -------------------------------------------------------


class FilesSubject(Subject):
    """The files destination on a temporary folder: members are the hashed emails of each
    audience's snapshot.csv, the file an operator uploads."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "exports"
        self.destination = make(tmp_path)

    def members(self, audience: str) -> set[str]:
        snapshot = self.root / audience / "snapshot.csv"
        if not snapshot.exists():
            return set()
        header, *rows = read_csv(snapshot)
        return {row[header.index("email")] for row in rows}

    def key(self, record: Change) -> str:
        return sha(record.identifiers["email"])

    def state(self) -> object:
        if not self.root.exists():
            return {}
        return {
            str(p.relative_to(self.root)): p.read_bytes()
            for p in self.root.rglob("*")
            if p.is_file()
        }

    def outgoing(self) -> str:
        state = self.state()
        assert isinstance(state, dict)
        return "\n".join(content.decode("utf-8", "replace") for content in state.values())


class TestFilesConformance(Conformance):
    @pytest.fixture
    def subject(self, tmp_path: Path) -> FilesSubject:
        return FilesSubject(tmp_path)
