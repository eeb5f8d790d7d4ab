SELECT
  "p"."profile_id"
FROM (
  SELECT
    "pid",
    MAX("ts") FILTER(WHERE
      "c0") AS a0,
    "pid" AS profile_id
  FROM (
    SELECT
      "canonical_profile_id" AS pid,
      "timestamp" AS ts,
      CAST(COALESCE(
        CAST("properties" #> ARRAY['campaign_id'] AS VARCHAR) IN ('"cmp_welcome_1"', '"cmp_cart_recovery_1"'),
        FALSE
      ) AS BOOLEAN) AS c0
    FROM profile_events
    WHERE
      "event_key" = 'email_delivered'
      AND "timestamp" >= CAST('2026-01-03 00:00:00.000000+00' AS TIMESTAMPTZ)
      AND "timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
  ) AS e
  GROUP BY
    "pid"
) AS p
LEFT JOIN (
  SELECT
    "canonical_profile_id" AS profile_id,
    COUNT(*) AS n
  FROM (
    SELECT
      "canonical_profile_id",
      "timestamp"
    FROM (
      SELECT
        "canonical_profile_id",
        "timestamp",
        "counted",
        MAX("mark") OVER (PARTITION BY "canonical_profile_id") AS anchor_ts
      FROM (
        SELECT
          "canonical_profile_id",
          "timestamp",
          "event_key" = 'order_completed' AS counted,
          CASE
            WHEN "event_key" = 'email_delivered'
            AND COALESCE(
              CAST("properties" #> ARRAY['campaign_id'] AS VARCHAR) IN ('"cmp_welcome_1"', '"cmp_cart_recovery_1"'),
              FALSE
            )
            THEN "timestamp"
          END AS mark
        FROM profile_events
        WHERE
          "event_key" IN ('email_delivered', 'order_completed')
          AND "timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
          AND "timestamp" >= CAST('2026-01-03 00:00:00.000000+00' AS TIMESTAMPTZ)
      ) AS m
    ) AS w
    WHERE
      "counted"
      AND "timestamp" > "anchor_ts"
      AND "timestamp" <= "anchor_ts" + INTERVAL '86400000000 MICROSECOND'
  ) AS e
  GROUP BY
    "canonical_profile_id"
) AS n0
  ON "n0"."profile_id" = "p"."profile_id"
WHERE
  (
    COALESCE(
      "a0" BETWEEN CAST('2026-01-03 00:00:00.000000+00' AS TIMESTAMPTZ) AND CAST('2026-01-09 00:00:00.000000+00' AS TIMESTAMPTZ),
      FALSE
    )
    AND (
      NOT "a0" IS NULL AND COALESCE("n0"."n", 0) = 0
    )
  )
