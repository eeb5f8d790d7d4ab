SELECT
  "p"."profile_id"
FROM (
  SELECT
    "pid",
    MAX("ts") FILTER(WHERE
      "ev" = 'added_to_cart') AS a0,
    MAX("ts") FILTER(WHERE
      "ev" = 'order_completed') AS a1,
    "pid" AS profile_id
  FROM (
    SELECT
      "canonical_profile_id" AS pid,
      "timestamp" AS ts,
      "event_key" AS ev
    FROM profile_events
    WHERE
      "event_key" IN ('added_to_cart', 'order_completed')
      AND "timestamp" >= CAST('2026-01-09 18:00:00.000001+00' AS TIMESTAMPTZ)
      AND "timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
  ) AS e
  GROUP BY
    "pid"
) AS p
WHERE
  (
    COALESCE("a0" >= CAST('2026-01-09 18:00:00.000001+00' AS TIMESTAMPTZ), FALSE)
    AND NOT COALESCE("a1" > "a0", FALSE)
  )
