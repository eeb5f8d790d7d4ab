"""The in-process bus: the same contract as Redis and NATS, in memory, for one process.

Useful to run ingest and workers as threads of one program, and to test worker code without a
server. Nothing survives the process; messages are kept until the bus is dropped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from cohortsync.realtime.bus import (
    DEFAULT_PARTITIONS,
    DEFAULT_PREFIX,
    DEFAULT_VISIBILITY,
    BusMessage,
    check_name,
    check_settings,
    partition_for,
    partition_key,
    select_partitions,
)
from cohortsync.realtime.bus_group import LeasedConsumer, State, T
from cohortsync.store.records import Message


@dataclass
class _Cursor:
    """A group's position in one partition and its delivered-but-unacked offsets (→ consumer)."""

    next: int = 0
    pending: dict[int, str] = field(default_factory=dict)


@dataclass
class _Log:
    """One partition: its messages in publish order, and each group's cursor."""

    entries: list[Message] = field(default_factory=list)
    groups: dict[str, _Cursor] = field(default_factory=dict)


class InProcessBus:
    """A partitioned log with consumer groups and leases, held in this process's memory."""

    def __init__(
        self,
        prefix: str = DEFAULT_PREFIX,
        partitions: int = DEFAULT_PARTITIONS,
        visibility: float = DEFAULT_VISIBILITY,
    ) -> None:
        check_settings(partitions, visibility)
        self.prefix = check_name("prefix", prefix)
        self.partitions = partitions
        self.visibility = visibility
        self._logs = [_Log() for _ in range(partitions)]
        self._groups: dict[str, State] = {}
        self._changed = threading.Condition()

    def publish(self, batch: Sequence[Message]) -> None:
        """Append every message to its partition."""
        if not batch:
            return
        with self._changed:
            for message in batch:
                self._logs[partition_for(partition_key(message), self.partitions)].entries.append(
                    message
                )
            self._changed.notify_all()

    def consumer(
        self, group: str, name: str, partitions: Sequence[int] | None = None
    ) -> InProcessConsumer:
        """Join `group` as `name`, for all or the given partitions."""
        return InProcessConsumer(
            self, group, name, select_partitions(self.partitions, partitions), self.visibility
        )

    def check(self) -> None:
        """Always reachable: it lives in this process."""

    def backlog(self, group: str) -> int:
        """Messages the group has not acked yet (delivered or not)."""
        with self._changed:
            total = 0
            for log in self._logs:
                cursor = log.groups.get(group)
                total += (
                    len(log.entries)
                    if cursor is None
                    else len(log.entries) - cursor.next + len(cursor.pending)
                )
            return total

    def drop(self) -> None:
        """Forget every message, group and lease."""
        with self._changed:
            self._logs = [_Log() for _ in range(self.partitions)]
            self._groups.clear()

    def close(self) -> None:
        """Nothing to release."""


class InProcessConsumer(LeasedConsumer):
    """A member of a group of the in-process bus."""

    def __init__(
        self,
        bus: InProcessBus,
        group: str,
        name: str,
        eligible: Sequence[int],
        visibility: float,
    ) -> None:
        super().__init__(group, name, eligible, visibility)
        self._bus = bus
        self._claimed: dict[int, deque[int]] = {}

    def _update(self, change: Callable[[State], tuple[State, T]]) -> T:
        with self._bus._changed:
            state, result = change(self._bus._groups.get(self.group, {}))
            self._bus._groups[self.group] = state
            return result

    def _cursor(self, partition: int) -> _Cursor:
        return self._bus._logs[partition].groups.setdefault(self.group, _Cursor())

    def _read(self, readable: Sequence[int], max_messages: int, wait: float) -> list[BusMessage]:
        deadline = time.monotonic() + wait
        with self._bus._changed:
            while True:
                got = self._take(readable, max_messages)
                remaining = deadline - time.monotonic()
                if got or remaining <= 0:
                    return got
                self._bus._changed.wait(remaining)

    def _take(self, readable: Sequence[int], max_messages: int) -> list[BusMessage]:
        got: list[BusMessage] = []
        for partition, offsets in self._claimed.items():
            cursor, entries = self._cursor(partition), self._bus._logs[partition].entries
            while offsets and len(got) < max_messages:
                offset = offsets.popleft()
                if offset in cursor.pending:
                    got.append(BusMessage(f"{partition}:{offset}", partition, entries[offset]))
        if got or not readable:
            return got
        each = -(-max_messages // len(readable))
        for partition in readable:
            cursor, entries = self._cursor(partition), self._bus._logs[partition].entries
            end = min(len(entries), cursor.next + each)
            for offset in range(cursor.next, end):
                cursor.pending[offset] = self.name
                got.append(BusMessage(f"{partition}:{offset}", partition, entries[offset]))
            cursor.next = end
        return got

    def _quiet(self, held: Collection[int]) -> set[int]:
        return {p for p in held if not self._claimed.get(p)}

    def _gained(self, partitions: Collection[int]) -> None:
        with self._bus._changed:
            for partition in partitions:
                cursor = self._cursor(partition)
                for offset in cursor.pending:
                    cursor.pending[offset] = self.name
                self._claimed[partition] = deque(sorted(cursor.pending))

    def _nack(self, by_partition: dict[int, list[str]]) -> None:
        with self._bus._changed:
            for partition, natives in by_partition.items():
                cursor = self._cursor(partition)
                back = {int(n) for n in natives if n.isdigit() and int(n) in cursor.pending}
                waiting = self._claimed.get(partition, deque())
                self._claimed[partition] = deque(sorted(back | set(waiting)))

    def _ack(self, by_partition: dict[int, list[str]]) -> None:
        with self._bus._changed:
            for partition, natives in by_partition.items():
                if partition < len(self._bus._logs):
                    pending = self._cursor(partition).pending
                    for native in natives:
                        if native.isdigit():
                            pending.pop(int(native), None)

    def _abandon(self, by_partition: dict[int, list[str]]) -> None:
        """Nothing to do: whoever takes a partition over claims its unacked entries."""
        del by_partition

    def _shutdown(self) -> None:
        """Nothing to release: the connection belongs to the bus."""
