"""Identifier normalisation and hashing: the published vectors byte for byte, and the properties
that keep hashes matchable (idempotent, never double-hashed, never the hash of "")."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cohortsync.destinations.hashing import (
    KINDS,
    hash_identifier,
    is_hashed,
    normalize,
    sha256_hex,
)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# (kind, raw, platform, default_region, normalised, sha256 or None when sent unhashed)
VECTORS = [
    ("email", "  John_Smith@Gmail.com ", "meta", "US", "john_smith@gmail.com",
     "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"),
    ("email", "Mary@Example.com", "meta", "US", "mary@example.com",
     "f1904cf1a9d73a55fa5de0ac823c4403ded71afd4c3248d00bdcd0866552bb79"),
    ("phone", "+1 (650) 555-1212", "meta", "US", "16505551212",
     "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"),
    ("phone", "(650)555-1212", "meta", "US", "16505551212",
     "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"),
    ("phone", "+16505551212", "meta", "US", "16505551212",
     "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"),
    ("phone", "15559876543", "meta", "US", "15559876543",
     "1ef970831d7963307784fa8688e8fce101a15685d62aa765fed23f3a2c576a4e"),
    ("phone", "+44 844 412 4653", "meta", "US", "448444124653",
     "dc008fda46e2e64002cf2f82a4906236282d431c4f75e5b60bfe79fc48546383"),
    ("phone", "0044 7700 900123", "meta", "US", "447700900123",
     "033134b911b137918338415ee3d20a064b24773d36a3b02e8b99fdd3fcd6b4cd"),
    ("phone", "07700 900123", "meta", "GB", "447700900123",
     "033134b911b137918338415ee3d20a064b24773d36a3b02e8b99fdd3fcd6b4cd"),
    ("fn", "Mary", "meta", "US", "mary",
     "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec"),
    ("first_name", "정", "meta", "US", "정",
     "8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14"),
    ("first_name", "Valéry", "meta", "US", "valéry",
     "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"),
    ("first_name", "Vale\u0301ry", "meta", "US", "valéry",  # NFD input composes to NFC
     "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"),
    ("ln", "O'Brien-Smith", "meta", "US", "obriensmith",
     "16765783f9c8c8a3accf27f1abb877688cb5904c21a4a7afb5f125bcfcb246ba"),
    ("first_initial", "M.", "meta", "US", "m",
     "62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a"),
    ("gender", "m", "meta", "US", "m",
     "62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a"),
    ("gender", "Female", "meta", "US", "f",
     "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111"),
    ("dob_year", "1997", "meta", "US", "1997",
     "0985b889a1fe4f4e1fb925061ac6fb2247f10875f5fcbe63eec2ab55ed68970e"),
    ("dob_month", "2", "meta", "US", "02",
     "a953f09a1b6b6725b81956e9ad0b1eb49e3ad40004c04307ef8af6246a054116"),
    ("dob_day", "16", "meta", "US", "16",
     "b17ef6d19c7a5b1ee83b907c595526dcb1eb06db8227d650d5dda0a9f4ce8cd9"),
    ("db", "2/16/1997", "meta", "US", "19970216",
     "01acdbf6ec7b4f478a225f1a246e5d6767eeab1a7ffa17f025265b5b94f40f0c"),
    ("city", "New York", "meta", "US", "newyork",
     "350c754ba4d38897693aa077ef43072a859d23f613443133fecbbd90a3512ca5"),
    ("state", "California", "meta", "US", "ca",
     "6959097001d10501ac7d54c0bdb8db61420f658f2922cc26e46d536119a31126"),
    ("zip", "94035-1234", "meta", "US", "94035",
     "1794327a4d443904421f5ca1f3d72d0a62ba2f0770d80755ec2220fc0efb052e"),
    ("zip", "M1 1AE", "meta", "US", "m11ae",
     "1dc694c2070e697769fb959b50671d76cafd430d8ca191fbdd0affcaea344ac5"),
    ("country", "United States", "meta", "US", "us",
     "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"),
    ("country", "US", "meta", "US", "us",
     "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"),
    ("country", "GB", "meta", "US", "gb",
     "0b407281768f0e833afef47ed464b6571d01ca4d53c12ce5c51d1462f4ad6677"),
    ("external_id", "user-123", "meta", "US", "user-123",
     "fcdec6df4d44dbc637c7c5b58efface52a7f8a88535423430255be0bb89bedd8"),
    ("madid", "AECE52E7-03EE-455A-B3C4-E57283966239", "meta", "US",
     "aece52e7-03ee-455a-b3c4-e57283966239", None),
    ("phone", "12345678901", "meta", "US", "12345678901",
     "254aa248acb47dd654ca3ea53f48c2c26d641d23d7e2e93a1ec56258df7674c4"),
    ("email", " Dana@Example.com ", "google", "US", "dana@example.com",
     "07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3"),
    ("email", "alex.2@example.com", "google", "US", "alex.2@example.com",
     "97a24240e3c76dfc0abdb63a3d73468ff8d94b81fd3dc084cc32994ba4fad7fe"),
    ("phone", "+1 800 5550101", "google", "US", "+18005550101",
     "61d6c2976b5d92b1ad63073a12fddd26040cd980067d03a93dd1cc50f1a3ac68"),
    ("phone", "+1 (650) 555-1212", "google", "US", "+16505551212",
     "1e231c66011e7a2d867a9cfae267a6aff103cf4913640b6e71a99850fc0ffbc8"),
    ("first_name", "Alex", "google", "US", "alex",
     "4135aa9dc1b842a653dea846903ddb95bfb8c5a10c504a7fa16e10bc31d1fdf0"),
    ("last_name", "Quinn", "google", "US", "quinn",
     "c512ca0c5c1e71be19f3356821e56732b5fb3ac894b0dbc5846d0b6920106fb3"),
    ("email", "Jane.Doe@gmail.com", "google", "US", "jane.doe@gmail.com",
     "831f6494ad6be4fcb3a724c3d5fef22d3ceffa3c62ef3a7984e45a0ea177f982"),
    ("email", "JaneDoe@Gmail.com", "tiktok", "US", "janedoe@gmail.com",
     "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"),
    ("phone", "+374 93 828222", "tiktok", "US", "37493828222",
     "65b7e6dcf6f4310f8d7cbfbd78289a753062fb054d6664fb9aaac5df66a422d4"),
    ("madid", "5F3A2B18-9C4D-4E7F-B8E2-17D3A1E69B25", "tiktok", "US",
     "5f3a2b18-9c4d-4e7f-b8e2-17d3a1e69b25", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "raw", "platform", "region", "normal", "digest"),
    VECTORS,
    ids=[f"{v[2]}-{v[0]}-{v[4]}" for v in VECTORS],
)
def test_published_vectors(
    kind: str, raw: str, platform: str, region: str, normal: str, digest: str | None
) -> None:
    """Every §9.1 vector: the normal form and the hash that leaves the process, byte for byte."""
    assert normalize(kind, raw, platform, default_region=region) == normal
    sent = hash_identifier(kind, raw, platform, default_region=region)
    assert sent == (normal if digest is None else digest)


def test_tiktok_maid_hash_matches_published_one() -> None:
    """TikTok's published MAID hash is the hash of the lower-cased id."""
    normal = normalize("madid", "5F3A2B18-9C4D-4E7F-B8E2-17D3A1E69B25", "tiktok")
    assert normal is not None
    assert sha256_hex(normal) == "83dc3f5f32b9472613b0f038d36f22585a609d018af6f6067f50da318bf354bd"


def test_phone_forms_differ_by_platform() -> None:
    """The same E.164 phone is digits-only for Meta and TikTok but keeps `+` for Google."""
    assert normalize("phone", "+16505551212", "meta") == "16505551212"
    assert normalize("phone", "+16505551212", "tiktok") == "16505551212"
    assert normalize("phone", "+16505551212", "google") == "+16505551212"


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("email", "not an email"),
        ("email", "@example.com"),
        ("phone", "12"),
        ("phone", "call me"),
        ("gender", "unknown"),
        ("date_of_birth", "31/31/1990"),
        ("dob_month", "13"),
        ("dob_year", "1850"),
        ("country", "Atlantis"),
        ("madid", "not-a-device-id!"),
        ("first_name", "!!!"),
    ],
)
def test_invalid_values_give_none(kind: str, raw: str) -> None:
    """A value that cannot be matched is dropped rather than hashed into noise."""
    assert normalize(kind, raw) is None
    assert hash_identifier(kind, raw) is None


def test_already_hashed_values_pass_through_lowercased() -> None:
    """An uppercase digest is lower-cased, never hashed a second time."""
    digest = sha256_hex("mary@example.com")
    assert hash_identifier("email", digest.upper()) == digest
    assert hash_identifier("phone", f" {digest} ") == digest
    assert is_hashed(digest.upper())
    assert not is_hashed("mary@example.com")


def test_unknown_kind_and_platform_are_named() -> None:
    """A misspelt kind or platform says which names exist."""
    with pytest.raises(ValueError, match=r"unknown identifier kind 'mail'.*email"):
        normalize("mail", "x@example.com")
    with pytest.raises(ValueError, match=r"unknown platform 'snap'.*meta"):
        normalize("email", "x@example.com", "snap")


def test_google_names_keep_single_inner_spaces() -> None:
    """Google asks to remove extra spaces, Meta to drop punctuation and spaces."""
    assert normalize("first_name", "  Mary   Ann ", "google") == "mary ann"
    assert normalize("first_name", "  Mary   Ann ", "meta") == "maryann"


# --- properties ---

PLATFORM = st.sampled_from(["meta", "google", "tiktok"])
BLANK = st.text(alphabet=" \t\r\n\u00a0\u2003", max_size=5)
E164 = st.one_of(
    st.from_regex(r"\+1[2-9]\d{2}[2-9]\d{6}", fullmatch=True),
    st.from_regex(r"\+447[1-9]\d{8}", fullmatch=True),
    st.from_regex(r"\+33[67]\d{8}", fullmatch=True),
)
EMAIL = st.builds(
    lambda local, domain, tld, pad: f"{pad}{local}@{domain}.{tld}{pad}",
    st.from_regex(r"[A-Za-z0-9._%+-]{1,20}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9-]{1,15}", fullmatch=True),
    st.sampled_from(["com", "CO", "org", "de"]),
    st.sampled_from(["", " ", "\t"]),
)
VALUES = st.one_of(
    st.tuples(st.just("email"), EMAIL),
    st.tuples(st.just("phone"), E164),
    st.tuples(st.sampled_from([k for k in KINDS if k not in ("email", "phone")]), st.text()),
)


@given(VALUES, PLATFORM)
def test_normalisation_is_idempotent(item: tuple[str, str], platform: str) -> None:
    """Normalising a normal form changes nothing, so hashes never drift between runs."""
    kind, raw = item
    once = normalize(kind, raw, platform)
    if once is not None:
        assert normalize(kind, once, platform) == once


@given(VALUES, PLATFORM)
def test_hash_of_normal_form_is_stable(item: tuple[str, str], platform: str) -> None:
    """Hashing the raw value and hashing its normal form send the same bytes."""
    kind, raw = item
    once = normalize(kind, raw, platform)
    sent = hash_identifier(kind, raw, platform)
    if once is None:
        assert sent is None or is_hashed(raw)
    else:
        assert hash_identifier(kind, once, platform) == sent


@given(st.sampled_from(KINDS), st.binary(min_size=32, max_size=32), PLATFORM)
def test_digests_pass_through_unchanged(kind: str, raw: bytes, platform: str) -> None:
    """A 64-hex value is never hashed again (MADIDs are not hashed at all)."""
    digest = raw.hex()
    assert hash_identifier(kind, digest, platform) == digest
    assert hash_identifier(kind, digest.upper(), platform) == digest


@given(st.sampled_from(KINDS), BLANK, PLATFORM)
def test_blank_gives_none(kind: str, blank: str, platform: str) -> None:
    """Empty or blank values are omitted, never hashed."""
    assert normalize(kind, blank, platform) is None
    assert hash_identifier(kind, blank, platform) is None


@given(st.sampled_from(KINDS), st.text(), PLATFORM)
def test_never_the_hash_of_empty(kind: str, raw: str, platform: str) -> None:
    """No input of any kind produces sha256("")."""
    assert hash_identifier(kind, raw, platform) != EMPTY_SHA256
    assert normalize(kind, raw, platform) != ""
