"""Meta's side of `sync --reconcile`: an audience's approximate size, and a rebuild of its whole
member list through one `/usersreplace` session (destinations.md §1.1, §1.4, §1.8).

A replace session is one `session_id` with `batch_seq` 1..N of ≤ 10,000 rows, the last flagged
`last_batch_flag`; Meta then holds exactly the session's rows. `batch_seq` 1 starts the session
and is never resent, so a rebuild interrupted after it resumes with the later batches of the
same session (any number but 1 may be resent), within Meta's 90 minutes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cohortsync.destinations.base import (
    ADD,
    Batch,
    PermanentError,
    PlatformCount,
    Rebuild,
    RebuildResult,
)
from cohortsync.destinations.http import PreparedRequest, json_body
from cohortsync.destinations.meta_graph import graph_send

if TYPE_CHECKING:
    from cohortsync.destinations.meta_custom_audience import MetaCustomAudienceDestination

SCHEMA = ("EXTERN_ID", "EMAIL", "PHONE")
MAX_ROWS = 10_000
EMPTY = (
    "no member to upload: Meta's replace takes at least one row, so an empty audience is not "
    "rebuilt; members leave it through sync's removes"
)


def count_members(dest: MetaCustomAudienceDestination, audience: str) -> PlatformCount | None:
    """Meta's approximate size of the audience (`approximate_count_lower/upper_bound`)."""
    found = dest.existing_id(audience)
    if found is None:
        return PlatformCount(0, 0, f"no audience named {audience} on Meta yet")
    size = dest.read_size(audience, found)
    if size is None:
        return None
    lower, upper = size.low, size.high
    if lower is None or upper is None or lower < 0 or upper < lower:
        return None
    note = "approximate range Meta gives" if lower != upper else "Meta's approximate count"
    if size.operation_status and size.operation_status != "Normal":
        note += f"; operation status {size.operation_status}"
    return PlatformCount(lower, upper, note)


def rebuild(dest: MetaCustomAudienceDestination, job: Rebuild, session: int) -> RebuildResult:
    """Replace the audience's members with `job.members` through replace session `session`."""
    uploads, rejected = dest.plan(Batch(f"reconcile/{job.seed}", job.audience, job.members))
    rows = sorted({row for upload in uploads if upload.op == ADD for row in upload.rows})
    if any(upload.op != ADD for upload in uploads):
        raise PermanentError("a rebuild takes the members to hold, never removes")
    if not rows:
        raise PermanentError(f"meta_custom_audience {dest.context.name}: {EMPTY}")
    chunks = [rows[i : i + MAX_ROWS] for i in range(0, len(rows), MAX_ROWS)]
    audience_id = dest.audience_id(job.audience)
    sent = 0
    for index in range(job.start, len(chunks)):
        what = f"meta_custom_audience {dest.context.name}: replace {job.audience}"
        body = {
            "payload": {"schema": list(SCHEMA), "is_raw": True, "data": chunks[index]},
            "session": {
                "session_id": session,
                "batch_seq": index + 1,
                "last_batch_flag": index == len(chunks) - 1,
                "estimated_num_total": len(rows),
            },
        }
        request = PreparedRequest(
            "POST",
            dest.settings.url(f"{audience_id}/usersreplace"),
            dest.settings.auth_params(),
            {"Content-Type": "application/json"},
            json_body(body),
        )
        graph_send(dest.context.http, request, what, dest.context.clock())
        sent += len(chunks[index])
        if job.acknowledged is not None:
            job.acknowledged(index + 1)
    return RebuildResult(len(chunks) - job.start, len(chunks), sent, rejected)
