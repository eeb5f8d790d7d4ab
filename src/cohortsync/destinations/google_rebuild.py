"""Google's side of `sync --reconcile`: a Customer Match list's size, and a rebuild of its whole
member list as `audienceMembers:removeAll` then `audienceMembers:ingest` (more-destinations.md
§1.1, §1.3, §1.5, §1.8).

The requests are the removeAll, then the members sorted, ≤ 10,000 per ingest; a rebuild
interrupted midway resumes with the first request not acknowledged (an ingest sent twice adds
nothing twice). Google shows a list's size per network (`sizeInfo`), of matched members: the
figure is the range across networks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from cohortsync.destinations.base import (
    ADD,
    Batch,
    PermanentError,
    PlatformCount,
    Rebuild,
    RebuildResult,
)
from cohortsync.destinations.http import PreparedRequest

if TYPE_CHECKING:
    from cohortsync.destinations.google_customer_match import (
        GoogleCustomerMatchDestination,
        Member,
    )

MAX_MEMBERS = 10_000
SIZES = ("displayNetworkMembersCount", "searchNetworkMembersCount")


def count_members(dest: GoogleCustomerMatchDestination, audience: str) -> PlatformCount | None:
    """The list's size across networks (`sizeInfo`), or None while Google shows none."""
    list_id = dest.lists.existing(audience)
    if list_id is None:
        return PlatformCount(0, 0, f"no user list named {audience} on Google yet")
    what = f"google_customer_match {dest.context.name}: read the size of {audience}"
    info = dest.lists.size(list_id, what)
    sizes = [int(str(info[k])) for k in SIZES if str(info.get(k, "")).isdigit()]
    if not sizes:
        return None
    note = "members Google matched, per network" if min(sizes) != max(sizes) else ""
    return PlatformCount(min(sizes), max(sizes), note or "members Google matched")


def rebuild(dest: GoogleCustomerMatchDestination, job: Rebuild, terms: str) -> RebuildResult:
    """Empty the list with removeAll, then ingest every member, from request `job.start` on."""
    runs, rejected = dest.plan(Batch(f"reconcile/{job.seed}", job.audience, job.members))
    members = sorted(
        (m for op, ms in runs if op == ADD for m in ms),
        key=lambda m: orjson.dumps(m.body, option=orjson.OPT_SORT_KEYS),
    )
    if members and not dest.settings.accept_terms_of_service:
        raise PermanentError(f"google_customer_match {dest.context.name}: {terms}")
    list_id = dest.lists.id_of(job.audience)
    chunks: list[list[Member]] = [
        members[i : i + MAX_MEMBERS] for i in range(0, len(members), MAX_MEMBERS)
    ]
    requests: list[tuple[PreparedRequest, int]] = [(_remove_all(dest, list_id), 0)]
    requests += [(dest.request(ADD, list_id, chunk), len(chunk)) for chunk in chunks]
    what = f"google_customer_match {dest.context.name}: rebuild {job.audience}"
    sent = 0
    for index in range(job.start, len(requests)):
        request, size = requests[index]
        dest.client.call(request, what)
        sent += size
        if job.acknowledged is not None:
            job.acknowledged(index + 1)
    return RebuildResult(len(requests) - job.start, len(requests), sent, rejected)


def _remove_all(dest: GoogleCustomerMatchDestination, list_id: str) -> PreparedRequest:
    """The `audienceMembers:removeAll` request for one list. No `removeAsOfTime`: Google then
    takes the time it receives the request, before any of the ingests that follow it (sent only
    once it answered), and a clock ahead of Google's cannot make it refuse a time to come."""
    body = {"destinations": [dest.settings.destination(list_id)]}
    return dest.client.prepare("POST", "v1/audienceMembers:removeAll", body)
