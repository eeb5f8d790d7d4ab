SELECT
  "p"."profile_id"
FROM profiles AS p
LEFT JOIN (
  SELECT
    "pid",
    COUNT(*) FILTER(WHERE
      "ev" = 'added_to_cart'
      AND "ts" >= CAST('2026-01-09 18:00:00.000001+00' AS TIMESTAMPTZ)) AS a0,
    MAX("ts") FILTER(WHERE
      "ev" = 'added_to_cart') AS a1,
    MAX("ts") FILTER(WHERE
      "ev" = 'order_completed') AS a2
  FROM (
    SELECT
      "canonical_profile_id" AS pid,
      "event_key" AS ev,
      "timestamp" AS ts
    FROM profile_events
    WHERE
      "event_key" IN ('added_to_cart', 'order_completed')
      AND "timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
  ) AS e
  GROUP BY
    "pid"
) AS f
  ON "f"."pid" = "p"."profile_id"
WHERE
  "p"."merged_into" IS NULL
  AND (
    COALESCE("f"."a0", 0) >= 1 AND NOT COALESCE("f"."a2" > "f"."a1", FALSE)
  )
