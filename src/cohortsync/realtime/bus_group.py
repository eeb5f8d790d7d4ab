"""Consumer groups over a partitioned log: leases in one shared document, fair shares, hand-over.

Every member of a group records, in one document updated by compare-and-set, that it is alive
and which partitions it leases. Each maintenance round (a third of the visibility timeout, at
most 2 s) a member renews its leases, takes free partitions up to its fair share, and gives up
partitions beyond it once nothing of them is in flight (until then it stops reading them).
While partitions change hands, giver and taker run rounds every 0.1 s. A lease not renewed
within the visibility timeout is free again, so a dead member's partitions move on.
"""

from __future__ import annotations

import time
import zlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from cohortsync.identity.log_scrub import scrubbed_logger
from cohortsync.realtime.bus import BusError, BusMessage, check_name

log = scrubbed_logger("cohortsync.bus")
State = dict[str, Any]
"""{"members": {name: [expires_at, [partition, ...]]}, "leases": {"p": [name, expires_at]}}"""
T = TypeVar("T")
ROUND_AT_MOST = 2.0
"""Seconds between maintenance rounds at most: a partition given up by one member is taken by
another within about this long (not a third of the visibility timeout), so a new or returning
member gets its share without a pause of the partitions in between."""


HAND_OVER_ROUND = 0.1
"""Seconds between rounds while partitions change hands: the giver releases a partition as
soon as nothing of it is in flight, and the taker takes it at once, instead of each waiting
for its next ordinary round (up to 2 s each, during which the partition is read by no one)."""


@dataclass(frozen=True)
class Assignment:
    """The partitions a member leases, those among them it is giving up (not read), and whether
    another member holds more than its share (so partitions are about to come free)."""

    held: frozenset[int]
    surplus: frozenset[int]
    awaiting: bool = False

    @property
    def handing_over(self) -> bool:
        """Whether partitions are changing hands through this member."""
        return bool(self.surplus) or self.awaiting

    @property
    def readable(self) -> frozenset[int]:
        """Partitions to read new messages from."""
        return self.held - self.surplus


def rebalance(
    state: State,
    member: str,
    eligible: Sequence[int],
    idle: Collection[int],
    now: float,
    ttl: float,
) -> tuple[State, Assignment]:
    """One maintenance round of `member`: the new group document and what it now holds.

    `idle` are the member's partitions with nothing in flight, safe to hand over now.
    """
    members: dict[str, list[Any]] = {
        name: entry
        for name, entry in state.get("members", {}).items()
        if entry[0] > now and name != member
    }
    members[member] = [now + ttl, list(eligible)]
    leases: dict[int, tuple[str, float]] = {
        int(p): (owner, expires)
        for p, (owner, expires) in state.get("leases", {}).items()
        if expires > now
    }
    wanted = set(eligible)
    sharing = sum(1 for entry in members.values() if wanted & set(entry[1]))
    share = -(-len(wanted) // sharing)
    mine = {p for p, (owner, _) in leases.items() if owner == member}

    excess = max(0, len(mine & wanted) - share)
    by_preference = sorted(mine & wanted, key=lambda p: (p not in idle, -p))
    surplus = set(by_preference[:excess]) | (mine - wanted)
    released = surplus & set(idle)
    surplus -= released
    mine -= released
    for p in released:
        del leases[p]

    if len(mine) < share:
        start = zlib.crc32(member.encode()) % len(eligible)
        for p in (*eligible[start:], *eligible[:start]):
            if len(mine) >= share:
                break
            if p not in leases:
                mine.add(p)
    for p in mine:
        leases[p] = (member, now + ttl)
    document: State = {
        "members": members,
        "leases": {str(p): [owner, expires] for p, (owner, expires) in sorted(leases.items())},
    }
    others = Counter(owner for p, (owner, _) in leases.items() if owner != member and p in wanted)
    awaiting = len(mine) < share and any(n > share for n in others.values())
    return document, Assignment(frozenset(mine), frozenset(surplus), awaiting)


def leave(state: State, member: str) -> State:
    """The group document without `member` and its leases."""
    return {
        "members": {n: e for n, e in state.get("members", {}).items() if n != member},
        "leases": {p: e for p, e in state.get("leases", {}).items() if e[0] != member},
    }


def split_id(delivery_id: str) -> tuple[int, str]:
    """(partition, the bus's own id) of a delivery id; `BusError` if it is not one."""
    head, sep, native = delivery_id.partition(":")
    if not sep or not head.isdigit() or not native:
        raise BusError(f"{delivery_id!r} is not a delivery id from this bus")
    return int(head), native


class LeasedConsumer(ABC):
    """A consumer group member: leases, in-flight tracking and the fetch loop, any back end."""

    def __init__(self, group: str, name: str, eligible: Sequence[int], visibility: float) -> None:
        self.group = check_name("group", group)
        self.name = check_name("consumer name", name)
        self.visibility = visibility
        self._eligible = tuple(eligible)
        self._assignment = Assignment(frozenset(), frozenset())
        self._in_flight: dict[int, set[str]] = {}
        self._next_round = 0.0
        self._closed = False
        self.undecodable = 0

    # -- what a back end provides -------------------------------------------------------------
    @abstractmethod
    def _update(self, change: Callable[[State], tuple[State, T]]) -> T:
        """Apply `change` to the group document atomically (retrying on conflict)."""

    @abstractmethod
    def _read(self, readable: Sequence[int], max_messages: int, wait: float) -> list[BusMessage]:
        """Deliveries ready now or within `wait`: leftovers first, then new ones of `readable`."""

    @abstractmethod
    def _quiet(self, held: Collection[int]) -> set[int]:
        """The partitions of `held` with nothing buffered or being read by the back end."""

    @abstractmethod
    def _gained(self, partitions: Collection[int]) -> None:
        """Prepare newly held partitions: their unacked messages are delivered first."""

    @abstractmethod
    def _ack(self, by_partition: dict[int, list[str]]) -> None:
        """Acknowledge native ids, grouped by partition."""

    @abstractmethod
    def _nack(self, by_partition: dict[int, list[str]]) -> None:
        """Make these deliveries (and anything newer already fetched from their partitions)
        come again, in partition order, before anything else of those partitions."""

    @abstractmethod
    def _abandon(self, by_partition: dict[int, list[str]]) -> None:
        """On close, before the leases go: make these unacked deliveries available again."""

    @abstractmethod
    def _shutdown(self) -> None:
        """Release what the consumer holds of the back end."""

    # -- the contract -------------------------------------------------------------------------
    @property
    def partitions(self) -> frozenset[int]:
        """The partitions this consumer reads now."""
        return self._assignment.readable

    def fetch(self, max_messages: int = 1000, timeout: float = 1.0) -> list[BusMessage]:
        """About `max_messages` deliveries in partition order; waits up to `timeout` for one."""
        if self._closed:
            raise BusError(f"consumer {self.name!r} of group {self.group!r} is closed")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if time.monotonic() >= self._next_round:
                self._maintain()
            wait = max(0.0, min(deadline, self._next_round) - time.monotonic())
            got = self._read(sorted(self._assignment.readable), max(1, max_messages), wait)
            if got:
                for delivery in got:
                    self._in_flight.setdefault(delivery.partition, set()).add(delivery.id)
                return got
            if time.monotonic() >= deadline:
                return []

    def ack(self, delivery_ids: Sequence[str]) -> None:
        """Mark deliveries processed: they are never delivered to this group again."""
        self._settle(delivery_ids, self._ack)

    def nack(self, delivery_ids: Sequence[str]) -> None:
        """Give deliveries back unprocessed: the next fetches return them again, before anything
        newer of their partitions (so a failed batch is retried in order)."""
        self._settle(delivery_ids, self._nack)

    def _settle(
        self, delivery_ids: Sequence[str], verdict: Callable[[dict[int, list[str]]], None]
    ) -> None:
        by_partition: dict[int, list[str]] = {}
        for delivery_id in delivery_ids:
            partition, native = split_id(delivery_id)
            by_partition.setdefault(partition, []).append(native)
        if not by_partition:
            return
        verdict(by_partition)
        for delivery_id in delivery_ids:
            partition = int(delivery_id.partition(":")[0])
            self._in_flight.get(partition, set()).discard(delivery_id)

    def close(self) -> None:
        """Leave the group: unacked deliveries and held partitions go to the others at once."""
        if self._closed:
            return
        self._closed = True
        try:
            self._abandon(
                {p: [split_id(i)[1] for i in ids] for p, ids in self._in_flight.items() if ids}
            )
            self._update(lambda state: (leave(state, self.name), None))
        finally:
            self._shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- maintenance --------------------------------------------------------------------------
    def _maintain(self) -> None:
        before = self._assignment.held
        idle = self._quiet(before) - {p for p, ids in self._in_flight.items() if ids}
        eligible, name, ttl = self._eligible, self.name, self.visibility
        self._assignment = self._update(
            lambda state: rebalance(state, name, eligible, idle, time.time(), ttl)
        )
        every = min(self.visibility / 3, ROUND_AT_MOST)
        if self._assignment.handing_over:
            every = min(every, HAND_OVER_ROUND)
        self._next_round = time.monotonic() + every
        gained = self._assignment.held - before
        lost = before - self._assignment.held
        if lost:
            log.info("consumer %s of %s gave up partitions %s", name, self.group, sorted(lost))
        if gained:
            log.info("consumer %s of %s took partitions %s", name, self.group, sorted(gained))
            self._gained(sorted(gained))
