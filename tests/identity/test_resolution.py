"""Identity resolution through the engine: which profile each event and identifier ends up on."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cohortsync.engine import Engine
from cohortsync.errors import NotFoundError


@pytest.fixture
def engine(project_on_both: Path) -> Iterator[Engine]:
    """The project on each store engine: resolution must not depend on where it is stored."""
    with Engine.open(project_on_both) as opened:
        yield opened


def at(minute: int, hour: int = 10) -> str:
    """An ISO timestamp on a fixed day, so tests control event order."""
    return f"2026-05-01T{hour:02d}:{minute:02d}:00Z"


def track(mid: str, minute: int, event: str = "Product Viewed", **ids: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": mid, "event": event, "timestamp": at(minute), **ids}


def identify(
    mid: str, minute: int, traits: dict[str, Any] | None = None, **ids: Any
) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "identify", "messageId": mid, "timestamp": at(minute), **ids}
    if traits is not None:
        message["traits"] = traits
    return message


def identifiers(engine: Engine, lookup: str) -> set[tuple[str, str]]:
    view = engine.find_profile(lookup)
    return {(i["kind"], i["value"]) for i in view.identifiers}


def event_profile(engine: Engine, message_id: str) -> str:
    mark = "%s" if engine.store.dialect == "postgres" else "?"
    rows = engine.store.query(  # type: ignore[attr-defined]
        f"SELECT canonical_profile_id FROM profile_events WHERE message_id = {mark}", [message_id]
    )
    assert len(rows) == 1, f"event {message_id} not stored once: {rows}"
    return str(rows[0][0])


def merge_count(engine: Engine) -> int:
    return int(engine.store.query("SELECT count(*) FROM merges")[0][0])  # type: ignore[attr-defined]


# --- anonymous to identified -------------------------------------------------------------------


@pytest.mark.parametrize("batches", ["one batch", "two batches"])
def test_anonymous_visitor_who_identifies_becomes_one_profile(engine: Engine, batches: str) -> None:
    messages = [
        track("m-track", 1, anonymousId="a1"),
        identify("m-ident", 2, {"email": "ann@example.com"}, anonymousId="a1", userId="u1"),
    ]
    if batches == "one batch":
        engine.ingest_messages(messages)
    else:
        for message in messages:
            engine.ingest_messages([message])

    view = engine.find_profile("user_id:u1")
    assert {(i["kind"], i["value"]) for i in view.identifiers} == {
        ("anonymous_id", "a1"),
        ("user_id", "u1"),
        ("email", "ann@example.com"),
    }
    assert engine.find_profile("anonymous_id:a1").profile_id == view.profile_id
    assert engine.find_profile("email:ann@example.com").profile_id == view.profile_id
    assert event_profile(engine, "m-track") == view.profile_id
    assert "m-track" in {e["message_id"] for e in view.recent_events}
    assert engine.stats()["profiles"]["total"] == 1


# --- merges ------------------------------------------------------------------------------------


def test_event_linking_anonymous_visitor_to_known_customer_merges_the_profiles(
    engine: Engine,
) -> None:
    engine.ingest_messages(
        [
            identify("k-1", 1, {"email": "bo@example.com"}, userId="u2"),
            track("anon-1", 2, anonymousId="a2"),
            track("anon-2", 3, event="Cart Viewed", anonymousId="a2"),
        ]
    )
    known = engine.find_profile("user_id:u2").profile_id
    anonymous = engine.find_profile("anonymous_id:a2").profile_id
    assert known != anonymous
    assert engine.stats()["profiles"] == {"total": 2, "merged_away": 0}

    engine.ingest_messages([identify("link", 4, {"email": "BO@example.com"}, anonymousId="a2")])

    survivor = engine.find_profile("anonymous_id:a2")
    assert survivor.profile_id == engine.find_profile("email:bo@example.com").profile_id
    assert survivor.profile_id == engine.find_profile("user_id:u2").profile_id
    assert [(m["from_profile"], m["into_profile"]) for m in survivor.merges] == [(anonymous, known)]
    assert survivor.merges[0]["via"] in {"anonymous_id", "email"}
    assert survivor.merges[0]["message_id"] == "link"
    assert engine.stats()["profiles"] == {"total": 1, "merged_away": 1}
    for message_id in ("k-1", "anon-1", "anon-2", "link"):
        assert event_profile(engine, message_id) == survivor.profile_id
    assert {"anon-1", "anon-2"} <= {e["message_id"] for e in survivor.recent_events}
    # The merged-away profile id still leads to the survivor.
    assert engine.find_profile(anonymous).profile_id == survivor.profile_id


def test_profile_known_by_email_and_profile_known_by_phone_merge_when_one_call_has_both(
    engine: Engine,
) -> None:
    engine.ingest_messages(
        [
            identify("e-1", 1, {"email": "cy@example.com"}, anonymousId="b1"),
            identify("p-1", 2, {"phone": "(415) 555-2671"}, anonymousId="b2"),
        ]
    )
    assert engine.stats()["profiles"]["total"] == 2

    engine.ingest_messages(
        [identify("both", 3, {"email": "cy@example.com", "phone": "+14155552671"}, userId="u3")]
    )

    by_email = engine.find_profile("email:cy@example.com")
    assert engine.find_profile("phone:415-555-2671").profile_id == by_email.profile_id
    assert {(i["kind"], i["value"]) for i in by_email.identifiers} == {
        ("email", "cy@example.com"),
        ("phone", "+14155552671"),
        ("anonymous_id", "b1"),
        ("anonymous_id", "b2"),
        ("user_id", "u3"),
    }
    assert engine.stats()["profiles"] == {"total": 1, "merged_away": 1}


def test_shared_device_does_not_merge_two_customers(engine: Engine) -> None:
    engine.ingest_messages([identify("first", 1, anonymousId="d1", userId="u1")])
    engine.ingest_messages([identify("second", 2, anonymousId="d1", userId="u2")])

    first = engine.find_profile("user_id:u1")
    second = engine.find_profile("user_id:u2")
    assert first.profile_id != second.profile_id
    assert ("anonymous_id", "d1") in {(i["kind"], i["value"]) for i in first.identifiers}
    assert {(i["kind"], i["value"]) for i in second.identifiers} == {("user_id", "u2")}
    assert engine.find_profile("anonymous_id:d1").profile_id == first.profile_id
    assert event_profile(engine, "first") == first.profile_id
    assert event_profile(engine, "second") == second.profile_id
    assert first.merges == [] and second.merges == []
    assert merge_count(engine) == 0
    assert engine.stats()["profiles"] == {"total": 2, "merged_away": 0}


def test_shared_device_in_one_batch_keeps_two_customers_apart(engine: Engine) -> None:
    engine.ingest_messages(
        [
            identify("first", 1, anonymousId="d1", userId="u1"),
            track("browse", 2, anonymousId="d1"),
            identify("second", 3, anonymousId="d1", userId="u2"),
        ]
    )
    assert (
        engine.find_profile("user_id:u1").profile_id != engine.find_profile("user_id:u2").profile_id
    )
    assert event_profile(engine, "second") == engine.find_profile("user_id:u2").profile_id
    assert merge_count(engine) == 0


def test_profile_holds_one_email_and_a_second_email_for_the_same_user_is_not_attached(
    engine: Engine,
) -> None:
    engine.ingest_messages([identify("i-1", 1, {"email": "a@x.com"}, userId="u5")])
    engine.ingest_messages([identify("i-2", 2, {"email": "b@x.com"}, userId="u5")])

    emails = {v for k, v in identifiers(engine, "user_id:u5") if k == "email"}
    assert emails == {"a@x.com"}
    assert (
        engine.find_profile("email:a@x.com").profile_id
        == engine.find_profile("user_id:u5").profile_id
    )
    with pytest.raises(NotFoundError):
        engine.find_profile("email:b@x.com")
    assert event_profile(engine, "i-2") == engine.find_profile("user_id:u5").profile_id


def test_email_limit_keeps_two_customers_apart_when_one_call_names_both_emails(
    engine: Engine,
) -> None:
    engine.ingest_messages(
        [
            identify("i-1", 1, {"email": "a@x.com"}, anonymousId="anon-a"),
            identify("i-2", 2, {"email": "b@x.com"}, anonymousId="anon-b"),
            # One anonymous id that already belongs to a's profile now claims b's email.
            identify("i-3", 3, {"email": "b@x.com"}, anonymousId="anon-a"),
        ]
    )
    a = engine.find_profile("email:a@x.com").profile_id
    b = engine.find_profile("email:b@x.com").profile_id
    assert a != b
    assert merge_count(engine) == 0


# --- alias -------------------------------------------------------------------------------------


def test_alias_links_anonymous_profile_to_user_id(engine: Engine) -> None:
    engine.ingest_messages([track("t-9", 1, anonymousId="a9")])
    anonymous = engine.find_profile("anonymous_id:a9").profile_id

    engine.ingest_messages(
        [
            {
                "type": "alias",
                "messageId": "al-9",
                "previousId": "a9",
                "userId": "u9",
                "timestamp": at(2),
            }
        ]
    )

    view = engine.find_profile("user_id:u9")
    assert view.profile_id == engine.find_profile("anonymous_id:a9").profile_id == anonymous
    assert {("anonymous_id", "a9"), ("user_id", "u9")} <= {
        (i["kind"], i["value"]) for i in view.identifiers
    }
    assert event_profile(engine, "t-9") == view.profile_id


def test_alias_merges_anonymous_profile_into_existing_customer(engine: Engine) -> None:
    engine.ingest_messages(
        [
            identify("known", 1, {"email": "dee@example.com"}, userId="u9"),
            track("t-9", 2, anonymousId="a9"),
        ]
    )
    engine.ingest_messages(
        [
            {
                "type": "alias",
                "messageId": "al-9",
                "previousId": "a9",
                "userId": "u9",
                "timestamp": at(3),
            }
        ]
    )
    survivor = engine.find_profile("email:dee@example.com").profile_id
    assert engine.find_profile("anonymous_id:a9").profile_id == survivor
    assert event_profile(engine, "t-9") == survivor
    assert engine.stats()["profiles"] == {"total": 1, "merged_away": 1}


# --- traits ------------------------------------------------------------------------------------


def test_newer_trait_value_wins_even_when_an_older_identify_arrives_later(engine: Engine) -> None:
    engine.ingest_messages([identify("new", 30, {"plan": "pro"}, userId="u7")])
    engine.ingest_messages([identify("old", 5, {"plan": "free", "city": "Oslo"}, userId="u7")])

    traits = engine.find_profile("user_id:u7").traits
    assert traits["plan"] == "pro"
    assert traits["city"] == "Oslo"


def test_newer_trait_value_wins_within_one_batch_regardless_of_order(engine: Engine) -> None:
    engine.ingest_messages(
        [
            identify("new", 30, {"plan": "pro"}, userId="u7"),
            identify("old", 5, {"plan": "free"}, userId="u7"),
        ]
    )
    assert engine.find_profile("user_id:u7").traits["plan"] == "pro"


def test_context_traits_on_a_track_call_set_profile_traits(engine: Engine) -> None:
    message = track("ctx", 1, userId="u8")
    message["context"] = {"traits": {"city": "Lisbon", "email": "eve@example.com"}}
    engine.ingest_messages([message])

    view = engine.find_profile("user_id:u8")
    assert view.traits["city"] == "Lisbon"
    assert engine.find_profile("email:eve@example.com").profile_id == view.profile_id


def test_merged_profile_keeps_the_newest_value_of_each_trait(engine: Engine) -> None:
    engine.ingest_messages(
        [
            identify("k", 10, {"email": "fay@example.com", "plan": "pro"}, userId="u10"),
            identify("a", 20, {"plan": "trial", "city": "Rome"}, anonymousId="a10"),
        ]
    )
    engine.ingest_messages([identify("link", 21, {"email": "fay@example.com"}, anonymousId="a10")])
    traits = engine.find_profile("user_id:u10").traits
    assert traits["plan"] == "trial"
    assert traits["city"] == "Rome"


# --- normalisation -----------------------------------------------------------------------------


def test_emails_differing_in_case_and_whitespace_are_one_identifier(engine: Engine) -> None:
    engine.ingest_messages(
        [
            identify("e-1", 1, {"email": "  Jane.Doe@Gmail.COM "}, userId="jane"),
            identify("e-2", 2, {"email": "jane.doe@gmail.com"}, anonymousId="jane-phone"),
        ]
    )
    view = engine.find_profile("email: JANE.DOE@gmail.com")
    assert view.profile_id == engine.find_profile("user_id:jane").profile_id
    assert view.profile_id == engine.find_profile("anonymous_id:jane-phone").profile_id
    assert [v for k, v in identifiers(engine, "user_id:jane") if k == "email"] == [
        "jane.doe@gmail.com"
    ]
    assert engine.stats()["profiles"]["total"] == 1


def test_phone_numbers_in_different_formats_are_one_e164_identifier(engine: Engine) -> None:
    engine.ingest_messages(
        [
            identify("p-1", 1, {"phone": "(415) 555-2671"}, anonymousId="ph-1"),
            identify("p-2", 2, {"phone": "+1 415 555 2671"}, anonymousId="ph-2"),
            identify("p-3", 3, {"phone": "415.555.2671"}, anonymousId="ph-3"),
        ]
    )
    view = engine.find_profile("phone:+14155552671")
    assert [v for k, v in ((i["kind"], i["value"]) for i in view.identifiers) if k == "phone"] == [
        "+14155552671"
    ]
    for anon in ("ph-1", "ph-2", "ph-3"):
        assert engine.find_profile(f"anonymous_id:{anon}").profile_id == view.profile_id
    assert engine.stats()["profiles"]["total"] == 1
    assert engine.stats()["identifiers"]["by_kind"]["phone"] == 1


def test_invalid_email_and_phone_are_not_attached_and_are_counted_as_rejected(
    engine: Engine,
) -> None:
    engine.ingest_messages(
        [identify("bad-ids", 1, {"email": "jane@", "phone": "12", "plan": "pro"}, userId="uz")]
    )

    view = engine.find_profile("user_id:uz")
    assert {k for k, _ in ((i["kind"], i["value"]) for i in view.identifiers)} == {"user_id"}
    stats = engine.stats()
    assert stats["identifiers"]["rejected"] == {"email": 1, "phone": 1}
    assert stats["identifiers"]["by_kind"] == {"user_id": 1}
    # The event itself is kept: an unusable identifier does not quarantine the message.
    assert stats["events"]["total"] == 1
    assert stats["quarantined"]["total"] == 0

    rows = engine.store.query("SELECT * FROM identifier_rejections")  # type: ignore[attr-defined]
    assert len(rows) == 2
    for row in rows:
        for cell in row:
            assert "jane@" not in str(cell)
            assert str(cell) != "12"
            assert "12" not in str(cell).replace("bad-ids", "")


# --- idempotence and chains --------------------------------------------------------------------


def _history() -> list[dict[str, Any]]:
    return [
        track("h-1", 1, anonymousId="x1"),
        identify("h-2", 2, {"email": "gil@example.com", "plan": "free"}, userId="g1"),
        identify("h-3", 3, {"email": "gil@example.com"}, anonymousId="x1"),
        identify("h-4", 4, {"phone": "415 555 2671", "email": "bad@"}, userId="g1"),
        identify("h-5", 5, anonymousId="x1", userId="g2"),
        {
            "type": "alias",
            "messageId": "h-6",
            "previousId": "x9",
            "userId": "g1",
            "timestamp": at(6),
        },
        {"type": "track", "messageId": "h-7", "timestamp": at(7)},  # quarantined: no ids
    ]


def _snapshot(engine: Engine) -> dict[str, Any]:
    query = engine.store.query  # type: ignore[attr-defined]
    return {
        "stats": engine.stats(),
        "merges": query("SELECT from_profile, into_profile, message_id FROM merges ORDER BY 1"),
        "identities": query("SELECT kind, value, profile_id FROM identities ORDER BY 1, 2"),
        "traits": query("SELECT profile_id, name, value FROM profile_traits ORDER BY 1, 2"),
        "events": query("SELECT message_id, canonical_profile_id FROM profile_events ORDER BY 1"),
        "quarantine": query("SELECT origin, reason FROM quarantine ORDER BY 1"),
    }


def test_reingesting_the_same_messages_changes_nothing(engine: Engine) -> None:
    first = engine.ingest_messages(_history())
    before = _snapshot(engine)

    again = engine.ingest_messages(_history())

    assert again.stored == 0
    assert again.duplicates == first.stored
    assert _snapshot(engine) == before


def test_reingesting_message_by_message_changes_nothing(engine: Engine) -> None:
    for message in _history():
        engine.ingest_messages([message])
    before = _snapshot(engine)

    for message in _history():
        engine.ingest_messages([message])

    assert _snapshot(engine) == before


def test_merge_chain_within_one_batch_leaves_everything_on_the_survivor(engine: Engine) -> None:
    engine.ingest_messages(
        [
            track("c-1", 1, anonymousId="ca"),  # profile A
            identify("c-2", 2, {"email": "hal@example.com"}, anonymousId="cb"),  # profile B
            identify("c-3", 3, {"email": "hal@example.com"}, anonymousId="ca"),  # A -> B
            identify("c-4", 4, {"plan": "gold"}, userId="cc"),  # profile C
            identify("c-5", 5, {"email": "hal@example.com"}, userId="cc"),  # B -> C
            track("c-6", 6, anonymousId="ca"),
        ]
    )

    survivor = engine.find_profile("user_id:cc")
    assert {(i["kind"], i["value"]) for i in survivor.identifiers} == {
        ("anonymous_id", "ca"),
        ("anonymous_id", "cb"),
        ("email", "hal@example.com"),
        ("user_id", "cc"),
    }
    for lookup in ("anonymous_id:ca", "anonymous_id:cb", "email:hal@example.com"):
        assert engine.find_profile(lookup).profile_id == survivor.profile_id
    for message_id in ("c-1", "c-2", "c-3", "c-4", "c-5", "c-6"):
        assert event_profile(engine, message_id) == survivor.profile_id
    assert len(survivor.merges) == 2
    assert survivor.traits["plan"] == "gold"
    assert survivor.traits["email"] == "hal@example.com"
    assert engine.stats()["profiles"] == {"total": 1, "merged_away": 2}
    # Every merged-away profile id still resolves to the survivor.
    for merge in survivor.merges:
        assert engine.find_profile(merge["from_profile"]).profile_id == survivor.profile_id


def test_merge_chain_across_batches_leaves_everything_on_the_survivor(engine: Engine) -> None:
    engine.ingest_messages([track("c-1", 1, anonymousId="ca")])
    engine.ingest_messages([identify("c-2", 2, {"email": "hal@example.com"}, anonymousId="cb")])
    engine.ingest_messages([identify("c-3", 3, {"email": "hal@example.com"}, anonymousId="ca")])
    engine.ingest_messages([identify("c-4", 4, userId="cc")])
    engine.ingest_messages([identify("c-5", 5, {"email": "hal@example.com"}, userId="cc")])

    survivor = engine.find_profile("user_id:cc")
    for lookup in ("anonymous_id:ca", "anonymous_id:cb", "email:hal@example.com"):
        assert engine.find_profile(lookup).profile_id == survivor.profile_id
    for message_id in ("c-1", "c-2", "c-3", "c-4", "c-5"):
        assert event_profile(engine, message_id) == survivor.profile_id
    assert len(survivor.merges) == 2
    assert engine.stats()["profiles"] == {"total": 1, "merged_away": 2}
    for merge in survivor.merges:
        assert engine.find_profile(merge["from_profile"]).profile_id == survivor.profile_id


def test_resending_a_message_with_an_invalid_email_counts_the_rejection_once(
    engine: Engine,
) -> None:
    message = identify("retry-1", 1, {"email": "jane@"}, userId="ur")
    engine.ingest_messages([message])
    engine.ingest_messages([message])

    assert engine.stats()["identifiers"]["rejected"] == {"email": 1}


def test_resent_identify_without_timestamp_does_not_overwrite_newer_traits(
    engine: Engine,
) -> None:
    # Without a timestamp an event's time is its arrival time; a retry of the same message is a
    # duplicate and must not bring its (older) trait values back over newer ones.
    older = {
        "type": "identify",
        "messageId": "plan-free",
        "userId": "uw",
        "traits": {"plan": "free"},
    }
    newer = {"type": "identify", "messageId": "plan-pro", "userId": "uw", "traits": {"plan": "pro"}}
    engine.ingest_messages([older])
    engine.ingest_messages([newer])

    result = engine.ingest_messages([older])

    assert result.duplicates == 1
    assert engine.find_profile("user_id:uw").traits["plan"] == "pro"


def test_merge_keeps_the_survivors_newer_trait_over_an_older_one(engine: Engine) -> None:
    engine.ingest_messages([identify("a", 20, {"plan": "trial"}, anonymousId="a11")])
    engine.ingest_messages(
        [identify("k", 30, {"email": "gus@example.com", "plan": "pro"}, userId="u11")]
    )
    engine.ingest_messages([identify("link", 40, {"email": "gus@example.com"}, anonymousId="a11")])

    assert engine.find_profile("anonymous_id:a11").traits["plan"] == "pro"


def test_merged_profile_spans_the_first_and_last_events_of_both(engine: Engine) -> None:
    engine.ingest_messages([track("early", 1, anonymousId="a12")])
    engine.ingest_messages([identify("k", 5, {"email": "ida@example.com"}, userId="u12")])
    engine.ingest_messages([identify("link", 10, {"email": "ida@example.com"}, anonymousId="a12")])

    view = engine.find_profile("user_id:u12")
    assert view.first_seen == datetime(2026, 5, 1, 10, 1, tzinfo=UTC)
    assert view.last_seen == datetime(2026, 5, 1, 10, 10, tzinfo=UTC)
