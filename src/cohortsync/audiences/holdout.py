"""Deterministic holdout: the same profile lands in the same group of an audience every run.

`bucket` is the definition; `holdout_sql` computes the same flag inside the store's engine
(a batch compute flags every member there), and a property test holds the two equal.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

from sqlglot import exp

BUCKETS = 10_000
_PREFIX_HEX_DIGITS = 15  # the first 60 bits of the digest


def bucket(audience: str, profile_id: str) -> int:
    """The profile's bucket in 0..9,999 for this audience (first 60 bits of a SHA-256)."""
    digest = hashlib.sha256(f"{audience}:{profile_id}".encode()).hexdigest()
    return int(digest[:_PREFIX_HEX_DIGITS], 16) % BUCKETS


def in_holdout(audience: str, profile_id: str, percent: float | None) -> bool:
    """Whether the profile is held back from the audience as part of its control group."""
    if not percent:
        return False
    return bucket(audience, profile_id) < percent * 100


def holdout_flags(audience: str, profile_ids: Iterable[str], percent: float | None) -> list[bool]:
    """`in_holdout` for each profile id, in order."""
    if not percent:
        return [False for _ in profile_ids]
    limit = percent * 100
    return [bucket(audience, p) < limit for p in profile_ids]


def bucket_sql(audience: str, profile_id: exp.Expr, dialect: str) -> exp.Expr:
    """`bucket(audience, profile_id)` as an SQL expression of `dialect` (duckdb, postgres)."""
    key: exp.Expr = exp.DPipe(this=exp.Literal.string(f"{audience}:"), expression=profile_id)
    if dialect == "postgres":  # sha256 takes bytes there; a 60-bit string casts to bigint
        key = exp.Anonymous(this="CONVERT_TO", expressions=[key, exp.Literal.string("UTF8")])
    digest = exp.SHA2(this=key, length=exp.Literal.number(256))  # lower-case hex in both
    prefix = exp.Substring(
        this=digest, start=exp.Literal.number(1), length=exp.Literal.number(_PREFIX_HEX_DIGITS)
    )
    if dialect == "postgres":
        bits = exp.DataType.build(f"BIT({4 * _PREFIX_HEX_DIGITS})", dialect="postgres")
        hexed: exp.Expr = exp.Cast(
            this=exp.DPipe(this=exp.Literal.string("x"), expression=prefix), to=bits
        )
    else:
        hexed = exp.DPipe(this=exp.Literal.string("0x"), expression=prefix)
    number = exp.Cast(this=hexed, to=exp.DataType.build("BIGINT"))
    return exp.Mod(this=exp.Paren(this=number), expression=exp.Literal.number(BUCKETS))


def holdout_sql(
    audience: str, profile_id: exp.Expr, percent: float | None, dialect: str
) -> exp.Expr:
    """`in_holdout` as an SQL expression: FALSE without a holdout, else the bucket against
    the smallest whole number at or above `percent * 100` (the same test for whole buckets)."""
    if not percent:
        return exp.false()
    limit = math.ceil(percent * 100)
    return exp.LT(
        this=bucket_sql(audience, profile_id, dialect), expression=exp.Literal.number(limit)
    )
