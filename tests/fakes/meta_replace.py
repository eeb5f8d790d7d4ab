"""Full replace of a Custom Audience through `/usersreplace` (destinations.md §1.4, §1.7, §1.8).

The state machine of §1.8: an audience is NORMAL until a batch with `batch_seq == 1` starts a
replace session; later batches of that session (any number but 1, resends allowed, same schema)
add rows; `last_batch_flag` — or 90 minutes after the first batch — ends it, and the members
become exactly the rows the session received. While a session runs, `/users` edits are refused.
Errors are code 2650 with the documented subcodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tests.fakes.graph import GraphError, invalid
from tests.fakes.meta_audiences import Audience, Row, Session, Upload

WINDOW = timedelta(minutes=90)
IN_PROGRESS = 1870145
FIRST_BATCH_MISSING = 1870147
WENT_WRONG = 1870148
FINISHED = 1870159
TIMED_OUT = 1870158


def replace_error(subcode: int, message: str) -> GraphError:
    """Code 2650, "Failed to update the custom audience", with the subcode that says why."""
    return GraphError(
        2650, f"(#2650) Failed to update the custom audience: {message}", subcode=subcode
    )


@dataclass
class Replacement:
    """One running replace session of one audience."""

    session_id: int
    schema: tuple[str, ...]
    started: datetime
    rows: set[Row] = field(default_factory=set)
    received: int = 0
    invalid_entries: int = 0


@dataclass
class Replacer:
    """The replace sessions of every audience of the fake."""

    active: dict[str, Replacement] = field(default_factory=dict)
    finished: set[tuple[str, int]] = field(default_factory=set)
    timed_out: set[tuple[str, int]] = field(default_factory=set)

    def busy(self, audience: Audience, now: datetime) -> bool:
        """Whether a replace session runs on the audience (timed-out ones are ended first)."""
        self._expire(audience, now)
        return audience.id in self.active

    def apply(
        self, audience: Audience, session: Session, upload: Upload, now: datetime
    ) -> Replacement:
        """Take one `/usersreplace` batch; the audience is replaced when the session ends."""
        if session.session_id is None or session.batch_seq is None:
            raise invalid("session with session_id and batch_seq is required for usersreplace")
        self._expire(audience, now)
        key = (audience.id, session.session_id)
        current = self.active.get(audience.id)
        if session.batch_seq == 1:
            current = self._start(audience, session, upload, now)
        elif key in self.timed_out:
            raise replace_error(TIMED_OUT, "the replace session timed out after 90 minutes")
        elif key in self.finished:
            raise replace_error(FINISHED, "the replace session already finished")
        elif current is None or current.session_id != session.session_id:
            raise replace_error(
                FIRST_BATCH_MISSING, "the first batch (batch_seq 1) was not received"
            )
        if current.schema != upload.schema:
            raise replace_error(
                WENT_WRONG, "every batch of a replace session needs the same schema"
            )
        current.rows.update(frozenset(row.items()) for row in upload.rows)
        current.received += upload.received
        current.invalid_entries += upload.invalid_entries
        if session.last_batch_flag:
            self._end(audience, current, self.finished)
        return current

    def _start(
        self, audience: Audience, session: Session, upload: Upload, now: datetime
    ) -> Replacement:
        """Open a session with its first batch; refuse a second start or a rival session."""
        current = self.active.get(audience.id)
        key = (audience.id, session.session_id or 0)
        if current is not None and current.session_id != session.session_id:
            raise replace_error(IN_PROGRESS, "another replace session is in progress")
        if current is not None or key in self.finished or key in self.timed_out:
            raise replace_error(WENT_WRONG, "batch_seq 1 starts a session and must not be resent")
        started = Replacement(session.session_id or 0, upload.schema, now)
        self.active[audience.id] = started
        return started

    def _expire(self, audience: Audience, now: datetime) -> None:
        """End a session 90 minutes after its first batch with what it received."""
        current = self.active.get(audience.id)
        if current is not None and now - current.started > WINDOW:
            self._end(audience, current, self.timed_out)

    def _end(self, audience: Audience, current: Replacement, into: set[tuple[str, int]]) -> None:
        """Replace the members with the session's rows and close the session."""
        audience.members = set(current.rows)
        del self.active[audience.id]
        into.add((audience.id, current.session_id))
