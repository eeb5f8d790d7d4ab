"""The holdout split: deterministic, and close to the configured rate."""

from __future__ import annotations

import hashlib

from cohortsync.audiences.holdout import bucket, holdout_flags, in_holdout


def test_bucket_follows_the_documented_formula() -> None:
    digest = hashlib.sha256(b"cio_x:p-42").hexdigest()
    assert bucket("cio_x", "p-42") == int(digest[:15], 16) % 10_000


def test_holdout_rate_is_close_to_the_percent_and_stable() -> None:
    ids = [f"profile-{i}" for i in range(2_000)]
    first = holdout_flags("cio_cart_abandon_6h", ids, 10)
    assert 0.08 * 2_000 <= sum(first) <= 0.12 * 2_000
    assert holdout_flags("cio_cart_abandon_6h", ids, 10) == first
    assert first == [in_holdout("cio_cart_abandon_6h", p, 10) for p in ids]


def test_holdout_depends_on_the_audience_and_grows_with_the_percent() -> None:
    ids = [f"profile-{i}" for i in range(2_000)]
    a = holdout_flags("a", ids, 10)
    assert a != holdout_flags("b", ids, 10)
    wider = holdout_flags("a", ids, 20)
    assert all(w for h, w in zip(a, wider, strict=True) if h)  # 10% ⊂ 20%
    assert not any(holdout_flags("a", ids, None))
