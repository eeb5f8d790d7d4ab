SELECT
  "p"."profile_id"
FROM (
  SELECT
    "pid",
    SUM("c0") AS a0,
    COUNT(*) FILTER(WHERE
      "ts" >= CAST('2025-12-06 00:00:00.000000+00' AS TIMESTAMPTZ)
      AND "ts" <= CAST('2025-12-20 00:00:00.000000+00' AS TIMESTAMPTZ)) AS a1,
    MAX("ts") AS a2,
    "pid" AS profile_id
  FROM (
    SELECT
      "canonical_profile_id" AS pid,
      "timestamp" AS ts,
      TRY_CAST(CAST(JSON_EXTRACT("properties", '/total') AS TEXT) AS DOUBLE) AS c0
    FROM profile_events
    WHERE
      "event_key" = 'order_completed'
      AND "timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
  ) AS e
  GROUP BY
    "pid"
) AS p
WHERE
  (
    (
      NOT "a0" IS NULL AND "a0" >= 500
    )
    AND COALESCE("a1", 0) >= 1
    AND NOT COALESCE("a2" >= CAST('2025-12-20 00:00:00.000001+00' AS TIMESTAMPTZ), FALSE)
  )
