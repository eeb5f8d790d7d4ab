"""Known people: catch hashes of badly normalised identifiers (destinations.md §1.6, §2, §9.1).

Meta cannot tell a good hash from a bad one, so a wrong normalisation silently kills the match
rate. Tests register the raw identities they seeded; this module computes, on its own and from
the documented rules only, the right normalised form of each and the usual wrong ones
(unstripped, not lower-cased, `+` or `00` kept on a phone, national number without its country
code, punctuation kept in a name, a gmail address with its dots removed, a hash hashed twice).
A hash of a wrong form is then refused by the fake.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import phonenumbers

# Column of the Custom Audiences schema → the key of a known person that feeds it.
PERSON_FIELDS = {"EMAIL": "email", "PHONE": "phone", "FN": "fn", "LN": "ln"}


def sha256(text: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 bytes of `text`."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def email_forms(raw: str) -> tuple[str, set[str]]:
    """The right form of an email (trimmed, lower-cased) and the usual wrong ones."""
    right = raw.strip().lower()
    local, _, domain = right.partition("@")
    wrong = {raw, raw.strip(), raw.lower(), raw.upper(), raw.strip().upper(), right + "."}
    wrong.add(local.replace(".", "") + "@" + domain)
    wrong.add(local.split("+", 1)[0] + "@" + domain)
    return right, wrong - {right}


def phone_forms(raw: str, region: str) -> tuple[str, set[str]]:
    """The right form of a phone (digits with country code, no `+`) and the usual wrong ones."""
    number = phonenumbers.parse(raw, region.upper())
    national = str(number.national_number)
    if number.italian_leading_zero:
        national = "0" * (number.number_of_leading_zeros or 1) + national
    right = f"{number.country_code}{national}"
    digits = re.sub(r"\D", "", raw)
    wrong = {raw, raw.strip(), "+" + right, "00" + right, national, digits, "0" + national}
    wrong.add(f"{number.country_code}0{national}")
    wrong.add(re.sub(r"[^\d+]", "", raw))
    return right, wrong - {right}


def name_forms(raw: str) -> tuple[str, set[str]]:
    """The right form of a first or last name (NFC, lower-cased, letters only) and wrong ones."""
    lowered = unicodedata.normalize("NFC", raw.strip().lower())
    right = "".join(char for char in lowered if unicodedata.category(char).startswith("L"))
    ascii_only = re.sub(r"[^a-z]", "", lowered)
    wrong = {raw, raw.strip(), lowered, raw.strip().upper(), ascii_only}
    wrong.add(unicodedata.normalize("NFD", right))
    return right, wrong - {right}


@dataclass
class KnownPeople:
    """The registered people, and for each schema column the hashes of wrong forms."""

    people: list[dict[str, str]] = field(default_factory=list)
    right: dict[str, dict[str, int]] = field(default_factory=dict)
    wrong: dict[str, set[str]] = field(default_factory=dict)

    def register(self, people: Iterable[Mapping[str, str]]) -> None:
        """Add people given as raw `email`, `phone`, `fn`, `ln` (and `country`, default US)."""
        for person in people:
            index = len(self.people)
            self.people.append(dict(person))
            for column, key in PERSON_FIELDS.items():
                raw = person.get(key)
                if raw:
                    self._add(column, index, *self._forms(key, raw, person.get("country", "US")))

    def badly_normalised(self, column: str, value: str) -> bool:
        """Whether `value` is the hash of a wrong form of a registered person's identifier."""
        if value in self.right.get(column, {}):
            return False
        return value in self.wrong.get(column, set())

    def who(self, column: str, value: str) -> dict[str, str] | None:
        """The registered person whose right hash in `column` is `value`, if any."""
        index = self.right.get(column, {}).get(value)
        return None if index is None else self.people[index]

    def _add(self, column: str, index: int, right: str, wrong: set[str]) -> None:
        """Remember the right hash of one identifier and the hashes of its wrong forms."""
        right_hash = sha256(right)
        self.right.setdefault(column, {})[right_hash] = index
        bad = {sha256(form) for form in wrong} | {sha256(right_hash)}
        self.wrong.setdefault(column, set()).update(bad - {right_hash})

    @staticmethod
    def _forms(key: str, raw: str, region: str) -> tuple[str, set[str]]:
        """The right and wrong forms of one raw identifier, by kind."""
        if key == "email":
            return email_forms(raw)
        if key == "phone":
            return phone_forms(raw, region)
        return name_forms(raw)
