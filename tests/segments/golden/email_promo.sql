SELECT
  "p"."profile_id"
FROM profiles AS p
LEFT JOIN (
  SELECT
    "pid",
    COUNT(*) FILTER(WHERE
      "ev" = 'product_viewed' AND "c0") AS a0
  FROM (
    SELECT
      "canonical_profile_id" AS pid,
      "event_key" AS ev,
      "timestamp" AS ts,
      CAST(CASE
        WHEN "event_key" = 'product_viewed'
        THEN (
          JSON_TYPE("properties", '/category') = 'VARCHAR'
          AND JSON_EXTRACT_STRING("properties", '/category') IN ('shoes', 'bags')
        )
        AND (
          JSON_TYPE("properties", '/price') IN ('BIGINT', 'UBIGINT', 'DOUBLE', 'HUGEINT')
          AND TRY_CAST(JSON_EXTRACT_STRING("properties", '/price') AS DOUBLE) > 20
        )
      END AS BOOLEAN) AS c0
    FROM profile_events
    WHERE
      "event_key" = 'product_viewed'
      AND "timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
      AND "timestamp" >= CAST('2026-01-03 00:00:00.000001+00' AS TIMESTAMPTZ)
  ) AS e
  GROUP BY
    "pid"
) AS f
  ON "f"."pid" = "p"."profile_id"
WHERE
  "p"."merged_into" IS NULL
  AND (
    COALESCE("f"."a0", 0) >= 3
    OR NOT "p"."profile_id" IN (
      SELECT
        "profile_id"
      FROM identities
      WHERE
        "kind" = 'email'
    )
  )
