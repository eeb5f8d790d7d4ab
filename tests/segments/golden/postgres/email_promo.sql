SELECT
  "p"."profile_id"
FROM profiles AS p
LEFT JOIN (
  SELECT
    "pid",
    COUNT(*) FILTER(WHERE
      "c0") AS a0
  FROM (
    SELECT
      "canonical_profile_id" AS pid,
      "timestamp" AS ts,
      CAST(COALESCE(CAST("properties" #> ARRAY['category'] AS VARCHAR) IN ('"shoes"', '"bags"'), FALSE)
      AND COALESCE(
        CASE
          WHEN JSONB_TYPEOF("properties" #> ARRAY['price']) = 'number'
          THEN CAST("properties" #> ARRAY['price'] AS DOUBLE PRECISION)
        END > 20,
        FALSE
      ) AS BOOLEAN) AS c0
    FROM profile_events
    WHERE
      "event_key" = 'product_viewed'
      AND "timestamp" >= CAST('2026-01-03 00:00:00.000001+00' AS TIMESTAMPTZ)
      AND "timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
  ) AS e
  GROUP BY
    "pid"
) AS f0
  ON "f0"."pid" = "p"."profile_id"
WHERE
  "p"."merged_into" IS NULL
  AND (
    COALESCE("a0", 0) >= 3
    OR NOT "p"."profile_id" IN (
      SELECT
        "profile_id"
      FROM identities
      WHERE
        "kind" = 'email'
    )
  )
