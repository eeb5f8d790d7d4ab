SELECT
  "profile_id"
FROM profiles
WHERE
  "merged_into" IS NULL
  AND "profile_id" IN (
    SELECT
      "profile_id"
    FROM (
      SELECT
        "e"."canonical_profile_id" AS profile_id
      FROM profile_events AS e
      WHERE
        "e"."event_key" = 'added_to_cart'
        AND "e"."timestamp" > CAST('2026-01-09 18:00:00.000000+00' AS TIMESTAMPTZ)
        AND "e"."timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
      GROUP BY
        "e"."canonical_profile_id"
      HAVING
        COUNT(*) >= 1
    ) AS c1
    INTERSECT
    SELECT
      "profile_id"
    FROM (
      SELECT
        "profile_id"
      FROM profiles
      WHERE
        "merged_into" IS NULL
      EXCEPT
      SELECT
        "profile_id"
      FROM (
        SELECT
          "e"."canonical_profile_id" AS profile_id
        FROM profile_events AS e
        JOIN (
          SELECT
            "canonical_profile_id" AS profile_id,
            MAX("timestamp") AS anchor_ts
          FROM profile_events
          WHERE
            "event_key" = 'added_to_cart'
            AND "timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
          GROUP BY
            "canonical_profile_id"
        ) AS a
          ON "a"."profile_id" = "e"."canonical_profile_id"
          AND "e"."timestamp" > "a"."anchor_ts"
        WHERE
          "e"."event_key" = 'order_completed'
          AND "e"."timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
        GROUP BY
          "e"."canonical_profile_id"
        HAVING
          COUNT(*) >= 1
      ) AS c2
    ) AS c3
  )
