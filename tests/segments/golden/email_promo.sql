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
        "e"."event_key" = 'product_viewed'
        AND "e"."timestamp" > CAST('2026-01-03 00:00:00.000000+00' AS TIMESTAMPTZ)
        AND "e"."timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
        AND (
          (
            JSON_TYPE("e"."properties", '/category') = 'VARCHAR'
            AND JSON_EXTRACT_STRING("e"."properties", '/category') = 'shoes'
          )
          OR (
            JSON_TYPE("e"."properties", '/category') = 'VARCHAR'
            AND JSON_EXTRACT_STRING("e"."properties", '/category') = 'bags'
          )
        )
        AND (
          JSON_TYPE("e"."properties", '/price') IN ('BIGINT', 'UBIGINT', 'DOUBLE', 'HUGEINT')
          AND TRY_CAST(JSON_EXTRACT_STRING("e"."properties", '/price') AS DOUBLE) > 20
        )
      GROUP BY
        "e"."canonical_profile_id"
      HAVING
        COUNT(*) >= 3
    ) AS c1
    UNION
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
          "profile_id"
        FROM identities
        WHERE
          "kind" = 'email'
      ) AS c2
    ) AS c3
  )
