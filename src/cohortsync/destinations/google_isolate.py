"""Delivering records to an API that refuses a whole request for one bad record (§1.9).

Records go in requests of at most `size`; a request refused for one record (`RecordError`) is
split in halves and each half sent again, until the bad record travels alone: it is rejected
with Google's reason and every other record is delivered. A transient or auth failure after
some requests were acknowledged leaves the rest to retry on their own; before any, it fails the
whole batch (nothing changed on the platform).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cohortsync.destinations.base import DeliveryError
from cohortsync.destinations.google_api import RecordError

T = TypeVar("T")


@dataclass
class Delivery(Generic[T]):
    """What one batch's requests achieved: answers of accepted requests, rejects, retries."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    delivered: list[T] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    retry: dict[int, str] = field(default_factory=dict)
    requests: int = 0


def deliver(
    items: Sequence[T],
    key: Callable[[T], int],
    send: Callable[[Sequence[T]], dict[str, Any]],
    size: int,
) -> Delivery[T]:
    """Send `items` in requests of ≤ `size`, isolating records that fail a request alone."""
    done: Delivery[T] = Delivery()
    pending: list[Sequence[T]] = [items[i : i + size] for i in range(0, len(items), size)]
    while pending:
        chunk = pending.pop(0)
        done.requests += 1
        try:
            done.answers.append(send(chunk))
        except RecordError as refused:
            if len(chunk) == 1:
                done.rejected[key(chunk[0])] = str(refused)
                continue
            middle = len(chunk) // 2
            pending[:0] = [chunk[:middle], chunk[middle:]]
            continue
        except DeliveryError as failed:
            if not done.answers and not done.rejected:
                raise
            for rest in (chunk, *pending):
                done.retry.update({key(item): str(failed) for item in rest})
            return done
        done.delivered.extend(chunk)
    return done
