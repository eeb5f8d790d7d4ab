"""`identifier_kinds` answers plain text (no `@`, nothing encoded, under 7 digits) without
scanning it: the answer is the one the full scan gives."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cohortsync.identity.pii import _TOKEN, PHONE, _phone, _without_emails, decode, identifier_kinds

TEXT = st.text(alphabet="0123456789０１２+＋-. ()/@%4a0Bex_u\\", max_size=24)


def scanned(text: str) -> frozenset[str]:
    """What the full scan finds."""
    decoded = decode(text)
    rest = _without_emails(decoded, " ")
    kinds = {"email"} if rest != decoded else set()
    if PHONE in _TOKEN.sub(_phone, rest):
        kinds.add("phone")
    return frozenset(kinds)


@given(TEXT)
def test_the_shortcut_agrees_with_the_full_scan(text: str) -> None:
    assert identifier_kinds(text) == scanned(text)


def test_plain_path_segments_and_ids_hold_none_and_numbers_still_read_as_phones() -> None:
    assert identifier_kinds("thank-you") == identifier_kinds("ord_000448_00") == frozenset()
    assert identifier_kinds("+1 650 55") == frozenset()  # six digits: never a phone
    assert identifier_kinds("6505551212") == {"phone"}
    assert identifier_kinds("ann%40example.com") == {"email"}
