"""What a destination is: the records it receives, what it can take (its capabilities), the
result it returns, the errors it raises.

A destination applies one batch of audience changes (or conversions) and reports a result per
record. It never retries by itself and never logs raw PII: the sync layer owns retries,
batching and the record of what each destination acknowledged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

import httpx
from pydantic import BaseModel, ConfigDict

from cohortsync.errors import CohortsyncError

Op = Literal["add", "remove"]
ADD: Op = "add"
REMOVE: Op = "remove"


@dataclass(frozen=True)
class Change:
    """One profile entering (`add`) or leaving (`remove`) one audience at one destination.

    `identifiers` are normalised but not hashed (`email` lower-cased, `phone` E.164, `user_id`,
    `anonymous_id`); a remove carries the identifiers the destination was given on the add.
    """

    change_id: int
    audience: str
    profile_id: str
    op: Op
    holdout: bool
    at: datetime
    identifiers: Mapping[str, str]


@dataclass(frozen=True)
class Batch:
    """Changes of one audience for one destination, under an id that stays the same on resend."""

    batch_id: str
    audience: str
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class Conversion:
    """One event forwarded as a conversion signal (an order → Meta CAPI `Purchase`)."""

    conversion_id: int
    message_id: str
    name: str
    event: str
    at: datetime
    profile_id: str
    identifiers: Mapping[str, str]
    value: float | None = None
    currency: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConversionBatch:
    """Conversions for one destination under a stable id."""

    batch_id: str
    conversions: tuple[Conversion, ...]


@dataclass(frozen=True)
class BatchResult:
    """What a destination acknowledged for one batch.

    Every record not named in `rejected` (permanent, with the reason; never retried) or in
    `retry` (transient for that record alone) was acknowledged. `stats` carries what the
    platform reported (`num_received`, `num_invalid_entries`, `events_received`, ...).
    """

    rejected: Mapping[int, str] = field(default_factory=dict)
    retry: Mapping[int, str] = field(default_factory=dict)
    stats: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DryRun:
    """What sending a batch would do, sending nothing: the exact requests (identifiers hashed,
    secrets redacted), and the records the destination would refuse, each with its reason."""

    requests: list[dict[str, Any]]
    refused: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadBack:
    """What a platform shows for an audience cohortsync keeps there: its name and description,
    and `drift`, what differs from what cohortsync set (None: nothing). `found` is False when
    no audience there is recognisably this one (deleted, or renamed and its description
    edited)."""

    audience: str
    found: bool
    name: str | None = None
    description: str | None = None
    drift: str | None = None


@dataclass(frozen=True)
class AudienceSize:
    """What a platform says of an audience it holds, read on a schedule: its approximate size
    (`low`..`high` people; Meta answers -1 for an audience too small to show) and the state
    of its last operation (`Normal`, `replace_in_progress`, ...)."""

    audience: str
    low: int | None
    high: int | None
    operation_status: str | None = None


@dataclass(frozen=True)
class PlatformCount:
    """How many members a platform shows for an audience: exact (`lower == upper`) or the
    range it gives; `note` says what the figure is (approximate, no list there yet, ...)."""

    lower: int
    upper: int
    note: str = ""

    @property
    def exact(self) -> bool:
        """Whether the platform gave one figure rather than a range."""
        return self.lower == self.upper


@dataclass(frozen=True)
class Rebuild:
    """One rebuild of an audience's whole list from cohortsync's members, resumable: `seed`
    derives every request (same seed and members, same bytes), `start` is how many of its
    requests the platform already acknowledged, `acknowledged(n)` is called after each one."""

    audience: str
    members: tuple[Change, ...]
    seed: str
    start: int = 0
    acknowledged: Callable[[int], None] | None = None


@dataclass(frozen=True)
class RebuildResult:
    """What a finished rebuild sent: requests made now, of `total`, members sent, and the
    members refused before sending (change id → reason)."""

    requests: int
    total: int
    sent: int
    rejected: Mapping[int, str] = field(default_factory=dict)


class DeliveryError(CohortsyncError):
    """A whole batch failed; the message never holds raw emails or phones."""


class TransientError(DeliveryError):
    """Timeout, connection failure, 429 or 5xx: retry later, not before `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """The destination refused the batch as invalid (4xx): retrying the same bytes cannot help."""


class AuthError(DeliveryError):
    """401/403 or an expired token: the destination is paused and its queue kept until fixed."""


class DestinationConfig(BaseModel):
    """Base of every destination's settings in `cohortsync.yml` (`type` names the module)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str
    dry_run: bool = False
    """Never send: `cohortsync sync` writes the requests it would make to a folder instead."""

    def usable_minimum(self) -> int | None:
        """Fewest matched members the platform serves an audience to (None: no minimum)."""
        return None


@dataclass(frozen=True)
class DestinationContext:
    """What a destination may use: its name, the project folder, an HTTP client and a clock."""

    name: str
    project_dir: Path
    http: httpx.Client
    clock: Callable[[], datetime]


@dataclass(frozen=True)
class RateLimit:
    """How a destination's service throttles: it answers 429 (or its own throttle code) with a
    time to wait, which the sync layer honours. `per_second`: the sustained request rate the
    platform documents, where it documents one."""

    per_second: float | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a destination takes and the limits it keeps: data the sync layer and the project
    checks ask about, so nothing ever asks which class a destination is."""

    identifiers: tuple[str, ...]
    """Identifier kinds it can match on, in order of preference."""
    audiences: bool = True
    """Whether it receives audience changes."""
    conversions: bool = False
    """Whether it receives conversions."""
    removes: bool = True
    """Whether it can take a member out of an audience; an audience goes only where it can."""
    replace: bool = False
    """Whether it can count an audience's members and rebuild its whole list (`count_members`,
    `rebuild`): what `sync --reconcile` needs."""
    no_replace: str = ""
    """Why it cannot be reconciled, when `replace` is False (shown by `sync --reconcile`)."""
    max_batch: int = 1000
    """Most records in one batch (a platform's documented request limit, or what the
    destination splits into requests that keep it)."""
    rate_limit: RateLimit | None = None
    """How it is throttled; None: never (a local file, the team's own database)."""
    ad_platform: bool = False
    """Ad platforms never receive holdout members, and get only the identifier kinds an audience
    lists under `identifiers`; the warehouse and the team's own systems get holdout flagged."""
    hashed: bool = False
    """Emails and phones leave only SHA-256-hashed, after the platform's normalisation."""
    reads_back: bool = False
    """It can read back the name and description the platform shows for an audience, so a
    rename or an edit made on the platform is reported as drift (`read_back`)."""
    remote: bool = True
    """It reaches a service over the network, which can refuse its credentials (an
    `AuthError`) or fail (a `TransientError`); False for what is written locally."""

    def __post_init__(self) -> None:
        if not self.identifiers:
            raise ValueError("capabilities need at least one identifier kind it matches on")
        if not (self.audiences or self.conversions):
            raise ValueError("capabilities must take audiences, conversions or both")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {self.max_batch}")


ConfigT = TypeVar("ConfigT", bound=DestinationConfig)


class Destination(ABC, Generic[ConfigT]):
    """One system that receives audience changes or conversions; `settings` is its config."""

    kind: ClassVar[str]
    """The `type:` that selects it in `cohortsync.yml`, and its entry-point name."""
    config_model: ClassVar[type[DestinationConfig]]
    capabilities: Capabilities
    """Declared on the class; an instance may narrow it to its settings (a local file)."""

    def __init__(self, config: DestinationConfig, context: DestinationContext) -> None:
        if not isinstance(config, self.config_model):
            raise TypeError(
                f"{self.kind} needs a {self.config_model.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.settings: ConfigT = cast(ConfigT, config)
        self.context = context

    def apply(self, batch: Batch) -> BatchResult:
        """Apply audience changes; raise a `DeliveryError` when the whole batch failed."""
        raise PermanentError(
            f"{self.kind} does not receive audience changes (capabilities.audiences is false)"
        )

    def send_conversions(self, batch: ConversionBatch) -> BatchResult:
        """Send conversions; raise a `DeliveryError` when the whole batch failed."""
        raise PermanentError(
            f"{self.kind} does not receive conversions (capabilities.conversions is false)"
        )

    @abstractmethod
    def dry_run(self, batch: Batch | ConversionBatch) -> list[dict[str, Any]]:
        """The exact requests (or writes) `apply`/`send_conversions` would make, as JSON-able
        dicts, with identifiers hashed as they would leave and secrets redacted; sends nothing."""

    def preview(self, batch: Batch | ConversionBatch) -> DryRun:
        """`dry_run`'s requests and the records `apply`/`send_conversions` would refuse.

        A destination that refuses records before sending overrides this to say which."""
        return DryRun(self.dry_run(batch))

    def read_back(self, audiences: Sequence[str]) -> list[ReadBack]:
        """What the platform shows for each audience (only where `capabilities.reads_back`);
        raise a `DeliveryError` when it cannot be asked."""
        raise PermanentError(f"{self.kind} cannot read audiences back (capabilities.reads_back)")

    def count_members(self, audience: str) -> PlatformCount | None:
        """How many members the platform shows for an audience (None: it shows no figure yet);
        only where `capabilities.replace`."""
        raise PermanentError(f"{self.kind} cannot count audience members (capabilities.replace)")

    def rebuild(self, rebuild: Rebuild) -> RebuildResult:
        """Make the platform's list exactly `rebuild.members`, sending the requests from
        `rebuild.start` on; raise a `DeliveryError` when one fails (a rerun resumes there)."""
        raise PermanentError(f"{self.kind} cannot rebuild an audience (capabilities.replace)")

    def collect_diagnostics(self) -> Mapping[str, Mapping[str, int]]:
        """Figures a platform reports later about batches it acknowledged earlier (a match
        rate known only once processed): batch id → stats to add to that batch's result."""
        return {}

    def read_sizes_every(self) -> float | None:
        """Seconds between reads of each audience's size on the platform (None: it has none)."""
        return None

    def read_sizes(self, audiences: Sequence[str]) -> list[AudienceSize]:
        """The size the platform shows for each audience it holds (one it does not hold yet is
        left out); raise a `DeliveryError` when it cannot be asked."""
        return []

    def close(self) -> None:
        """Release connections or files."""


AnyDestination = Destination[Any]
"""A destination of any config type (what the sync layer holds)."""


def usable(change: Change | Conversion, accepts: Sequence[str]) -> bool:
    """Whether a record carries at least one identifier the destination can match on."""
    return any(change.identifiers.get(kind) for kind in accepts)
