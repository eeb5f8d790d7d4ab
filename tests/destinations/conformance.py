"""The destination conformance kit: one set of record builders, and the cases every destination
passes against its fake, built-in or third-party.

Builders: `change(n)`, `batch(...)`, `conversion(n)`, `conversions(...)` make person `n`'s
records (`person(n)`: email, phone, user id) with the module's defaults; `Records(...)` gives
the same builders with a test module's own defaults (audience, times, profile ids, identifiers).

Cases: a test module opts in with a subclass of `Conformance` and a `subject` fixture yielding a
`Subject`: its destination pointed at the fake, plus how to read back what the fake holds and
how to make it fail::

    class TestWebhookConformance(Conformance):
        @pytest.fixture
        def subject(self, webhook_fake: WebhookFake, ...) -> WebhookSubject: ...

Every case runs for each record kind the destination's capabilities take; a kind, a fault or a
remove the capabilities rule out is skipped, after checking the destination refuses what it
does not take with a clear error. Nothing is passed silently.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
import pytest

from cohortsync.destinations.base import (
    AnyDestination,
    AuthError,
    Batch,
    BatchResult,
    Capabilities,
    Change,
    Conversion,
    ConversionBatch,
    Op,
    PermanentError,
    TransientError,
)

AUDIENCE = "cio_cart_abandon_6h"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15"
RETRY_AFTER = 7


CLOCK_AT = T0 + timedelta(days=1)
"""The time a subject's destination (and its fake) reads: a day after the kit's records."""


CHANGES = "changes"
CONVERSIONS = "conversions"
R = TypeVar("R", Change, Conversion)


def person(n: int, profile: str = "") -> dict[str, str]:
    """Identifiers of made-up person `n`, normalised as the identity graph holds them."""
    return {
        "email": f"shopper.{n}@example.com",
        "phone": f"+1650555{n % 10_000:04d}",
        "user_id": f"u-{n}",
    }


@dataclass(frozen=True)
class Records:
    """Builders of changes, conversions and their batches, with one test module's defaults.

    Record `n` happens at `start + n * step`, belongs to profile `profile.format(n=n)` and, when
    a test names no identifiers, carries `identifiers(n, profile)` (none if that is None).
    """

    audience: str = AUDIENCE
    start: datetime = T0
    step: timedelta = timedelta(seconds=1)
    profile: str = "p-{n}"
    identifiers: Callable[[int, str], Mapping[str, str]] | None = person

    def change(
        self,
        n: int,
        op: Op = "add",
        *,
        who: int | None = None,
        profile: str | None = None,
        holdout: bool = False,
        audience: str | None = None,
        at: datetime | None = None,
        ids: Mapping[str, str] | None = None,
        **identifiers: str,
    ) -> Change:
        """Change `n`: person `who` (default `n`) entering (`add`) or leaving the audience."""
        someone = n if who is None else who
        profile_id = profile if profile is not None else self.profile.format(n=someone)
        return Change(
            change_id=n,
            audience=audience or self.audience,
            profile_id=profile_id,
            op=op,
            holdout=holdout,
            at=at or self.start + n * self.step,
            identifiers=self._identifiers(someone, profile_id, ids, identifiers),
        )

    def batch(self, *changes: Change, batch_id: str = "b-1", audience: str | None = None) -> Batch:
        """A batch of changes of one audience."""
        return Batch(batch_id=batch_id, audience=audience or self.audience, changes=changes)

    def conversion(
        self,
        n: int,
        *,
        who: int | None = None,
        profile: str | None = None,
        ids: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> Conversion:
        """Conversion `n`: a web purchase by person `who` (default `n`); `fields` override."""
        someone = n if who is None else who
        profile_id = profile if profile is not None else self.profile.format(n=someone)
        values: dict[str, Any] = {
            "conversion_id": n,
            "message_id": f"msg-{n}",
            "name": "Purchase",
            "event": "order_completed",
            "at": self.start + n * self.step,
            "profile_id": profile_id,
            "identifiers": self._identifiers(someone, profile_id, ids, {}),
            "value": 59.9,
            "currency": "USD",
            "properties": {"order_id": f"o-{n}"},
            "context": {
                "ip": "203.0.113.7",
                "userAgent": UA,
                "page": {"url": "https://shop.example.com/checkout/thanks"},
            },
        }
        values.update(fields)
        return Conversion(**values)

    def conversions(self, *records: Conversion, batch_id: str = "c-1") -> ConversionBatch:
        """A batch of conversions."""
        return ConversionBatch(batch_id=batch_id, conversions=records)

    def _identifiers(
        self, n: int, profile: str, ids: Mapping[str, str] | None, named: Mapping[str, str]
    ) -> dict[str, str]:
        if ids is not None:
            return dict(ids)
        if named:
            return dict(named)
        return dict(self.identifiers(n, profile)) if self.identifiers is not None else {}


RECORDS = Records()
change = RECORDS.change
batch = RECORDS.batch
conversion = RECORDS.conversion
conversions = RECORDS.conversions


class Subject(ABC):
    """A destination pointed at its fake, and how the cases read that fake back and break it."""

    destination: AnyDestination

    @property
    def capabilities(self) -> Capabilities:
        """The destination's capabilities: which cases apply."""
        return self.destination.capabilities

    @abstractmethod
    def members(self, audience: str) -> set[str]:
        """Keys of the members the fake holds for `audience` now (`key` gives a change's)."""

    def key(self, record: Change) -> str:
        """The key `members` gives the person of a change (by default its profile id)."""
        return record.profile_id

    def conversions(self) -> Counter[str]:
        """Keys of the conversions the fake counts, each with how many times it counts it."""
        raise NotImplementedError(f"{type(self).__name__} must read the fake's conversions")

    def conversion_key(self, record: Conversion) -> str:
        """The key `conversions` gives a conversion (by default its message id)."""
        return record.message_id

    @abstractmethod
    def state(self) -> object:
        """Everything the fake took effect of, compared with `==`: a resend must not change it."""

    def outgoing(self) -> str:
        """Everything that left the process (requests, files, rows), as text."""
        raise NotImplementedError(f"{type(self).__name__} must show what left the process")

    def fail(self, status: int, retry_after: float | None = None) -> None:
        """Make the service's next answer `status`: 429 (with `retry_after`), 401 or 503."""
        raise NotImplementedError(f"{type(self).__name__} must script the fake's faults")

    def recover(self) -> None:  # noqa: B027 (optional: most faults are used up by one answer)
        """Undo `fail`, where one answer does not use the fault up."""

    def unusable(self, record: R) -> R:
        """A record this destination must refuse on its own (by default: no identifiers)."""
        return replace(record, identifiers={})


def primary(capabilities: Capabilities) -> str:
    """The kind a destination is mainly for: audience changes, else conversions."""
    return CHANGES if capabilities.audiences else CONVERSIONS


def records(
    kind: str, numbers: Iterable[int], batch_id: str, phones: bool = True
) -> Batch | ConversionBatch:
    """Person `n`'s add (or conversion) for each number, as one batch; without phones where
    the count is large (parsing 100,000 phone numbers takes half a minute)."""
    if kind == CHANGES:
        if phones:
            return batch(*(change(n) for n in numbers), batch_id=batch_id)
        return batch(*(change(n, ids=_no_phone(n)) for n in numbers), batch_id=batch_id)
    if phones:
        return conversions(*(conversion(n) for n in numbers), batch_id=batch_id)
    return conversions(*(conversion(n, ids=_no_phone(n)) for n in numbers), batch_id=batch_id)


def _no_phone(n: int) -> dict[str, str]:
    ids = person(n)
    del ids["phone"]
    return ids


def send(subject: Subject, sent: Batch | ConversionBatch) -> BatchResult:
    """Apply a batch of changes, or send a batch of conversions."""
    if isinstance(sent, Batch):
        return subject.destination.apply(sent)
    return subject.destination.send_conversions(sent)


def held(subject: Subject, kind: str) -> Counter[str]:
    """What the fake holds of one kind: member keys (once each) or counted conversions."""
    if kind == CHANGES:
        return Counter(subject.members(AUDIENCE))
    return subject.conversions()


def expected(subject: Subject, *sent: Batch | ConversionBatch) -> Counter[str]:
    """What the fake should hold after these adds (or conversions) were each applied once."""
    found: Counter[str] = Counter()
    for each in sent:
        if isinstance(each, Batch):
            found |= Counter({subject.key(c) for c in each.changes if c.op == "add"})
        else:
            found += Counter(subject.conversion_key(c) for c in each.conversions)
    return found


def raw_values(sent: Batch | ConversionBatch) -> set[str]:
    """The raw emails and phones (E.164 and digits) of a batch's records."""
    items = sent.changes if isinstance(sent, Batch) else sent.conversions
    values: set[str] = set()
    for item in items:
        for kind in ("email", "phone"):
            value = item.identifiers.get(kind)
            if value:
                values |= {value, value.lstrip("+")}
    return values


def assert_no_raw_pii(text: str, sent: Batch | ConversionBatch) -> None:
    """No raw email or phone of the batch appears in `text`."""
    leaked = sorted(value for value in raw_values(sent) if value in text)
    assert not leaked, f"raw identifiers left the process: {leaked[:3]}"


def takes(capabilities: Capabilities, kind: str) -> bool:
    """Whether the capabilities take records of this kind."""
    return capabilities.audiences if kind == CHANGES else capabilities.conversions


def require(subject: Subject, kind: str) -> None:
    """Skip a kind the capabilities rule out, once the destination refused it clearly."""
    if takes(subject.capabilities, kind):
        return
    with pytest.raises(PermanentError) as refused:
        send(subject, records(kind, [1], "refused-1"))
    assert subject.destination.kind in str(refused.value)
    flag = "audiences" if kind == CHANGES else "conversions"
    pytest.skip(f"capabilities.{flag} is false, and {kind} are refused: {refused.value}")


def require_removes(subject: Subject) -> None:
    """Skip removes when the capabilities rule them out, once a remove was refused clearly."""
    require(subject, CHANGES)
    if subject.capabilities.removes:
        return
    leaving = batch(change(1, "remove"), batch_id="refused-remove-1")
    try:
        result = subject.destination.apply(leaving)
    except PermanentError as refused:
        reason = str(refused)
    else:
        reason = result.rejected.get(1, "")
    assert "remove" in reason, f"a remove was not refused with a reason naming it: {reason!r}"
    pytest.skip(f"capabilities.removes is false, and a remove is refused: {reason}")


class Conformance:
    """The cases every destination passes; subclass it with a `subject` fixture."""

    @pytest.fixture(params=[CHANGES, CONVERSIONS])
    def kind(self, request: pytest.FixtureRequest) -> str:
        """The record kind a case runs with (skipped where the capabilities rule it out)."""
        return str(request.param)

    def test_adds_are_held(self, subject: Subject, kind: str) -> None:
        """Adds (or conversions) reach the fake, each acknowledged."""
        require(subject, kind)
        sent = records(kind, [1, 2, 3], "add-1")
        result = send(subject, sent)
        assert (dict(result.rejected), dict(result.retry)) == ({}, {})
        assert held(subject, kind) == expected(subject, sent)

    def test_removes_take_members_out(self, subject: Subject) -> None:
        """A remove takes the member out and leaves the others."""
        require_removes(subject)
        subject.destination.apply(batch(change(1), change(2), change(3), batch_id="add-1"))
        result = subject.destination.apply(batch(change(4, "remove", who=2), batch_id="rm-1"))
        assert dict(result.rejected) == {}
        assert subject.members(AUDIENCE) == {subject.key(change(1)), subject.key(change(3))}

    def test_a_removed_member_added_again_is_held(self, subject: Subject) -> None:
        """Add, remove, add again (three batches): the person is a member."""
        require_removes(subject)
        destination = subject.destination
        destination.apply(batch(change(1), batch_id="in-1"))
        destination.apply(batch(change(2, "remove", who=1), batch_id="out-1"))
        result = destination.apply(batch(change(3, who=1), batch_id="in-2"))
        assert dict(result.rejected) == {}
        assert subject.members(AUDIENCE) == {subject.key(change(1))}

    def test_a_resent_batch_id_is_applied_once(self, subject: Subject, kind: str) -> None:
        """The same batch sent again (a lost acknowledgement) changes nothing the fake holds."""
        require(subject, kind)
        sent = records(kind, [1, 2, 3], "dup-1")
        send(subject, sent)
        before = subject.state()
        result = send(subject, sent)
        assert (dict(result.rejected), dict(result.retry)) == ({}, {})
        assert subject.state() == before
        assert held(subject, kind) == expected(subject, sent)

    def test_a_refused_record_is_reported_alone(self, subject: Subject) -> None:
        """A record the destination cannot use is rejected with its reason; the rest go."""
        kind = primary(subject.capabilities)
        good = records(kind, [1, 3], "part-1")
        if isinstance(good, Batch):
            bad_change = subject.unusable(change(2))
            sent: Batch | ConversionBatch = replace(
                good, changes=(good.changes[0], bad_change, good.changes[1])
            )
        else:
            bad_conversion = subject.unusable(conversion(2))
            sent = replace(
                good, conversions=(good.conversions[0], bad_conversion, good.conversions[1])
            )
        result = send(subject, sent)
        assert set(result.rejected) == {2}
        assert isinstance(result.rejected[2], str) and result.rejected[2].strip()
        assert_no_raw_pii(result.rejected[2], sent)
        assert held(subject, kind) == expected(subject, good)

    def test_429_with_retry_after_is_transient_and_says_when(self, subject: Subject) -> None:
        """A throttled batch raises TransientError carrying the wait; the resend applies."""
        if subject.capabilities.rate_limit is None:
            pytest.skip("capabilities.rate_limit is None: the destination is never throttled")
        kind = primary(subject.capabilities)
        sent = records(kind, [1, 2], "throttled-1")
        subject.fail(429, retry_after=RETRY_AFTER)
        with pytest.raises(TransientError) as caught:
            send(subject, sent)
        assert caught.value.retry_after == RETRY_AFTER
        assert_no_raw_pii(str(caught.value), sent)
        subject.recover()
        send(subject, sent)
        assert held(subject, kind) == expected(subject, sent)

    def test_401_is_an_auth_error(self, subject: Subject) -> None:
        """Refused credentials raise AuthError (the sync layer pauses the destination)."""
        if not subject.capabilities.remote:
            pytest.skip("capabilities.remote is false: no service to refuse credentials")
        kind = primary(subject.capabilities)
        sent = records(kind, [1, 2], "auth-1")
        subject.fail(401)
        with pytest.raises(AuthError) as caught:
            send(subject, sent)
        assert_no_raw_pii(str(caught.value), sent)
        assert held(subject, kind) == Counter()

    def test_5xx_is_transient_and_the_resend_applies_once(self, subject: Subject) -> None:
        """A failing service raises TransientError; the resent batch is then applied once."""
        if not subject.capabilities.remote:
            pytest.skip("capabilities.remote is false: no service to fail")
        kind = primary(subject.capabilities)
        sent = records(kind, [1, 2], "down-1")
        subject.fail(503)
        with pytest.raises(TransientError) as caught:
            send(subject, sent)
        assert_no_raw_pii(str(caught.value), sent)
        subject.recover()
        send(subject, sent)
        assert held(subject, kind) == expected(subject, sent)

    def test_an_oversize_batch_is_split_or_refused(self, subject: Subject, kind: str) -> None:
        """One record over the declared max batch: all applied (split into requests the fake
        accepts), or refused whole with an error naming `max_batch` and its value."""
        require(subject, kind)
        limit = subject.capabilities.max_batch
        sent = records(kind, range(1, limit + 2), "big-1", phones=False)
        try:
            result = send(subject, sent)
        except PermanentError as refused:
            # Refused by the destination itself, naming its limit; not by the service after a
            # request over the service's own limit went out.
            assert "max_batch" in str(refused), f"not refused per max_batch: {refused}"
            assert f"{limit:,}" in str(refused) or str(limit) in str(refused)
            assert held(subject, kind) == Counter()
            return
        assert (dict(result.rejected), dict(result.retry)) == ({}, {})
        assert held(subject, kind) == expected(subject, sent)

    def test_identifiers_leave_hashed(self, subject: Subject) -> None:
        """Where the capabilities say so, no raw email or phone leaves the process."""
        if not subject.capabilities.hashed:
            pytest.skip("capabilities.hashed is false: identifiers are sent as held")
        sent = records(primary(subject.capabilities), [1, 2, 3], "hashed-1")
        send(subject, sent)
        assert_no_raw_pii(subject.outgoing(), sent)

    def test_a_dry_run_sends_nothing(self, subject: Subject) -> None:
        """`dry_run` describes the requests as JSON-able data and leaves the fake untouched."""
        kind = primary(subject.capabilities)
        before = subject.state()
        described = subject.destination.dry_run(records(kind, [1, 2], "dry-1"))
        assert isinstance(described, list)
        orjson.dumps(described)
        assert subject.state() == before
        assert held(subject, kind) == Counter()
