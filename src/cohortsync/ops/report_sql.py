"""The report's statements, one text for DuckDB and Postgres: per-arm figures of an audience
grouped by ISO week and day of first conversion, and purchase → acknowledged suppression."""

from __future__ import annotations

from collections.abc import Sequence

from cohortsync.store.base import not_test

DAY_US = 86_400_000_000
WEEK_US = 7 * DAY_US
MONDAY_SHIFT_US = 3 * DAY_US
"""1970-01-01 was a Thursday: shifted by three days, whole weeks since the epoch start on
Mondays (the ISO week)."""

_NUMBER = {
    "duckdb": "json_type(e.properties -> ${p}) IN ('BIGINT', 'UBIGINT', 'DOUBLE')",
    "postgres": "jsonb_typeof(e.properties -> ${p}) = 'number'",
}
_AS_DOUBLE = {
    "duckdb": "TRY_CAST(e.properties ->> ${p} AS DOUBLE)",
    "postgres": "(e.properties ->> ${p})::double precision",
}
_STRING = {
    "duckdb": "json_type(e.properties -> ${p}) = 'VARCHAR'",
    "postgres": "jsonb_typeof(e.properties -> ${p}) = 'string'",
}


def number_of(dialect: str, param: str) -> str:
    """SQL of the event property bound as `$param` when it is a JSON number, else NULL."""
    number, value = _NUMBER[dialect].format(p=param), _AS_DOUBLE[dialect].format(p=param)
    return f"CASE WHEN {number} THEN {value} END"


def discount_of(dialect: str, params: Sequence[str]) -> str:
    """SQL of an order's discount amount: the first of the properties holding a number > 0."""
    if not params:
        return "CAST(NULL AS FLOAT8)"
    amounts = []
    for p in params:
        value = number_of(dialect, p)
        # nested, not AND: neither engine promises to test the type before casting
        amounts.append(f"CASE WHEN {value} > 0 THEN {value} END")
    return f"coalesce({', '.join(amounts)})"


def coupon_of(dialect: str, params: Sequence[str]) -> str:
    """SQL true when one of the properties holds a non-empty string (a coupon code)."""
    if not params:
        return "FALSE"
    found = [
        f"coalesce({_STRING[dialect].format(p=p)} AND trim(e.properties ->> ${p}) <> '', FALSE)"
        for p in params
    ]
    return "(" + " OR ".join(found) + ")"


ARMS = f"""
WITH entries AS (
  -- a person's first entry, under the profile id they have now (an entrant's id may since
  -- have been merged into another profile: its events and orders are that profile's)
  SELECT DISTINCT ON (coalesce(a.canonical_id, m.profile_id))
         coalesce(a.canonical_id, m.profile_id) AS profile_id, m.holdout, m.entered_at
  FROM memberships m LEFT JOIN profile_aliases a ON a.profile_id = m.profile_id
  WHERE m.kind = 'audience' AND m.name = $audience AND m.entered_at >= $since
    AND m.entered_at <= $until AND {not_test('m.profile_id')}
  ORDER BY coalesce(a.canonical_id, m.profile_id), m.entered_at
), stored AS (
  -- the stored profile ids of each entrant's events (its own, and those merged into it):
  -- joined to events by an indexed column, where the profile_events view's expression is not
  SELECT n.profile_id, n.holdout, n.entered_at, n.profile_id AS stored_id FROM entries n
  WHERE NOT EXISTS (SELECT 1 FROM profile_aliases a WHERE a.profile_id = n.profile_id)
  UNION ALL
  SELECT n.profile_id, n.holdout, n.entered_at, a.profile_id FROM entries n
  JOIN profile_aliases a ON a.canonical_id = n.profile_id
), orders AS (
  SELECT s.profile_id, s.holdout, s.entered_at, e."timestamp" AS ordered_at,
         {{value}} AS value, {{discount}} AS discount, {{coupon}} AS coupon
  FROM stored s JOIN events e
    ON e.profile_id = s.stored_id AND e.type = 'track' AND e.event = $event
   AND e."timestamp" >= s.entered_at
   AND e."timestamp" < s.entered_at + INTERVAL '{{window}} seconds'
), flagged AS (
  SELECT o.*, o.discount IS NOT NULL OR o.coupon AS discounted FROM orders o
), failed AS (
  -- a discounted order while already in a suppression audience (entered strictly before it:
  -- the entry the order itself caused is no failure)
  SELECT f.profile_id, f.holdout, f.entered_at, f.ordered_at, f.value, f.discount,
         f.discounted, f.discounted AND EXISTS (
    SELECT 1 FROM memberships s
    WHERE s.kind = 'audience' AND s.name {{suppressing}} AND s.profile_id = f.profile_id
      AND s.entered_at < f.ordered_at AND (s.exited_at IS NULL OR s.exited_at > f.ordered_at)
  ) AS failure
  FROM flagged f
), both_kinds AS (
  -- every order, and every entrant once with none (no join back: one plan whatever the stats)
  SELECT * FROM failed
  UNION ALL
  SELECT profile_id, holdout, entered_at, NULL, NULL, NULL, FALSE, FALSE FROM entries
), per_profile AS (
  SELECT holdout,
         CAST(floor((epoch_us(entered_at) + {MONDAY_SHIFT_US}) / {WEEK_US}.0) AS BIGINT)
           AS week,
         CAST(ceil((epoch_us(min(ordered_at)) - epoch_us(entered_at)) / {DAY_US}.0) AS BIGINT)
           AS first_day,
         count(ordered_at) AS conversions, coalesce(sum(value), 0) AS revenue,
         count(*) FILTER (WHERE discounted) AS discounted,
         coalesce(sum(discount), 0) AS discount, count(discount) AS priced,
         count(*) FILTER (WHERE failure) AS failures
  FROM both_kinds GROUP BY profile_id, holdout, entered_at
)
SELECT holdout, week, first_day, count(*), count(*) FILTER (WHERE conversions > 0),
       coalesce(sum(revenue), 0), coalesce(sum(revenue * revenue), 0), sum(conversions),
       sum(discounted), coalesce(sum(discount), 0), sum(failures), sum(priced)
FROM per_profile GROUP BY holdout, week, first_day"""
"""Per (arm, ISO week of entry, whole days from entry to first conversion): profiles,
converters, revenue and its squares, orders, discounted orders, discount, failures, and
discounted orders with an amount."""

BUCKETS: tuple[tuple[str, float], ...] = (
    ("< 1s", 1),
    ("1–10s", 10),
    ("10s–1m", 60),
    ("1–5m", 300),
    ("5–15m", 900),
    ("15m–1h", 3600),
    ("1–6h", 21600),
    ("6–24h", 86400),
    ("≥ 1d", float("inf")),
)
"""Latency histogram buckets: label and exclusive upper bound in seconds."""

_BUCKET = (
    "CASE "
    + " ".join(f"WHEN seconds < {edge:g} THEN {i}" for i, (_, edge) in enumerate(BUCKETS[:-1]))
    + f" ELSE {len(BUCKETS) - 1} END"
)

LATENCY = f"""
WITH purchases AS (
  SELECT canonical_profile_id AS profile_id, "timestamp" AS bought_at,
         lead("timestamp") OVER (PARTITION BY canonical_profile_id ORDER BY "timestamp")
           AS next_at
  FROM profile_events
  WHERE type = 'track' AND event = $event AND "timestamp" >= $since
    AND canonical_profile_id NOT IN (SELECT profile_id FROM test_profiles)
), counted AS (
  SELECT profile_id, bought_at, next_at FROM purchases WHERE bought_at <= $until
), changes AS (
  SELECT name AS audience, profile_id, entered_at AS change_at, 'add' AS op FROM memberships
  WHERE kind = 'audience' AND name {{suppressing}} AND entered_at >= $since
  UNION ALL
  SELECT name, profile_id, exited_at, 'remove' FROM memberships
  WHERE kind = 'audience' AND exited_at >= $since
), caused AS (
  -- a change belongs to the latest purchase before it, if within the report window of it
  SELECT p.profile_id, p.bought_at AS purchased_at, c.audience, c.op, c.change_at AS changed_at
  FROM counted p JOIN changes c ON c.profile_id = p.profile_id AND c.change_at >= p.bought_at
   AND (p.next_at IS NULL OR c.change_at < p.next_at)
   AND c.change_at < p.bought_at + INTERVAL '{{window}} seconds'
), due AS (
  SELECT DISTINCT c.profile_id, c.purchased_at, r.destination
  FROM caused c JOIN {{routes}} ON r.audience = c.audience
), acked AS (
  SELECT c.profile_id, c.purchased_at, d.destination, min(d.resolved_at) AS acked_at
  FROM caused c JOIN delivery_log d
    ON d.kind = 'changes' AND d.outcome = 'acknowledged' AND d.audience = c.audience
   AND d.profile_id = c.profile_id AND d.op = c.op AND d.resolved_at >= c.changed_at
  GROUP BY c.profile_id, c.purchased_at, d.destination
), latency AS (
  SELECT destination, (epoch_us(acked_at) - epoch_us(purchased_at)) / 1000000.0 AS seconds
  FROM acked
)
SELECT 'latency', destination, CAST(NULL AS BIGINT), count(*),
       CAST(percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS FLOAT8),
       CAST(percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds) AS FLOAT8),
       CAST(percentile_cont(0.99) WITHIN GROUP (ORDER BY seconds) AS FLOAT8)
FROM latency GROUP BY destination
UNION ALL
SELECT 'bucket', destination, b, count(*), NULL, NULL, NULL
FROM (SELECT destination, {_BUCKET} AS b FROM latency) x GROUP BY destination, b
UNION ALL
SELECT 'waiting', u.destination, NULL, count(*), NULL, NULL, NULL FROM due u
WHERE NOT EXISTS (
  SELECT 1 FROM acked a WHERE a.profile_id = u.profile_id
     AND a.purchased_at = u.purchased_at AND a.destination = u.destination)
GROUP BY u.destination
UNION ALL
SELECT 'purchases', NULL, NULL, count(*), NULL, NULL, NULL FROM counted
UNION ALL
SELECT 'changed', NULL, NULL, count(*), NULL, NULL, NULL
FROM (SELECT DISTINCT profile_id, purchased_at FROM caused) x
UNION ALL
SELECT 'acknowledged', NULL, NULL, count(*), NULL, NULL, NULL
FROM (SELECT DISTINCT profile_id, purchased_at FROM acked) x"""
"""Rows (what, destination, bucket, count, p50, p95, p99) of the purchase → acknowledged
suppression latency (seconds) per destination, and the purchase counts."""
