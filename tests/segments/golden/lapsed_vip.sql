SELECT
  "p"."profile_id"
FROM profiles AS p
LEFT JOIN (
  SELECT
    "pid",
    SUM("c0") FILTER(WHERE
      "ev" = 'order_completed') AS a0,
    COUNT(*) FILTER(WHERE
      "ev" = 'order_completed'
      AND "ts" >= CAST('2025-12-06 00:00:00.000000+00' AS TIMESTAMPTZ)
      AND "ts" <= CAST('2025-12-20 00:00:00.000000+00' AS TIMESTAMPTZ)) AS a1,
    COUNT(*) FILTER(WHERE
      "ev" = 'order_completed'
      AND "ts" >= CAST('2025-12-20 00:00:00.000001+00' AS TIMESTAMPTZ)) AS a2
  FROM (
    SELECT
      "canonical_profile_id" AS pid,
      "event_key" AS ev,
      "timestamp" AS ts,
      CAST(CASE
        WHEN "event_key" = 'order_completed'
        THEN CASE
          WHEN JSON_TYPE("properties", '/total') IN ('BIGINT', 'UBIGINT', 'DOUBLE', 'HUGEINT')
          THEN TRY_CAST(JSON_EXTRACT_STRING("properties", '/total') AS DOUBLE)
        END
      END AS DOUBLE) AS c0
    FROM profile_events
    WHERE
      "event_key" = 'order_completed'
      AND "timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
  ) AS e
  GROUP BY
    "pid"
) AS f
  ON "f"."pid" = "p"."profile_id"
WHERE
  "p"."merged_into" IS NULL
  AND (
    COALESCE((
      NOT "f"."a0" IS NULL AND "f"."a0" >= 500
    ), FALSE)
    AND COALESCE("f"."a1", 0) >= 1
    AND COALESCE("f"."a2", 0) = 0
  )
