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
        "p"."profile_id"
      FROM profiles AS p
      LEFT JOIN (
        SELECT
          "p"."profile_id",
          CAST(TO_JSON("x"."v") AS JSON) AS value
        FROM profiles AS p
        LEFT JOIN (
          SELECT
            "e"."canonical_profile_id" AS profile_id,
            SUM(TRY_CAST(JSON_EXTRACT_STRING("e"."properties", '/total') AS DOUBLE)) AS v
          FROM profile_events AS e
          WHERE
            (
              (
                "e"."event_key" = 'order_completed'
                AND "e"."timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
              )
              AND (
                NOT JSON_TYPE("e"."properties", '/total') IS NULL
                AND JSON_TYPE("e"."properties", '/total') <> 'NULL'
              )
            )
            AND JSON_TYPE("e"."properties", '/total') IN ('BIGINT', 'UBIGINT', 'DOUBLE', 'HUGEINT')
          GROUP BY
            "e"."canonical_profile_id"
        ) AS x
          ON "x"."profile_id" = "p"."profile_id"
        WHERE
          "p"."merged_into" IS NULL
      ) AS t
        ON "t"."profile_id" = "p"."profile_id"
      WHERE
        "p"."merged_into" IS NULL
        AND (
          JSON_TYPE("t"."value", '$') IN ('BIGINT', 'UBIGINT', 'DOUBLE', 'HUGEINT')
          AND TRY_CAST(JSON_EXTRACT_STRING("t"."value", '$') AS DOUBLE) >= 500
        )
    ) AS c1
    INTERSECT
    SELECT
      "profile_id"
    FROM (
      SELECT
        "e"."canonical_profile_id" AS profile_id
      FROM profile_events AS e
      WHERE
        "e"."event_key" = 'order_completed'
        AND "e"."timestamp" >= CAST('2025-12-06 00:00:00.000000+00' AS TIMESTAMPTZ)
        AND "e"."timestamp" <= CAST('2025-12-20 00:00:00.000000+00' AS TIMESTAMPTZ)
      GROUP BY
        "e"."canonical_profile_id"
      HAVING
        COUNT(*) >= 1
    ) AS c2
    INTERSECT
    SELECT
      "profile_id"
    FROM (
      SELECT
        "p"."profile_id"
      FROM profiles AS p
      LEFT JOIN (
        SELECT
          "e"."canonical_profile_id" AS profile_id,
          COUNT(*) AS n
        FROM profile_events AS e
        WHERE
          "e"."event_key" = 'order_completed'
          AND "e"."timestamp" > CAST('2025-12-20 00:00:00.000000+00' AS TIMESTAMPTZ)
          AND "e"."timestamp" <= CAST('2026-01-10 00:00:00.000000+00' AS TIMESTAMPTZ)
        GROUP BY
          "e"."canonical_profile_id"
      ) AS m
        ON "m"."profile_id" = "p"."profile_id"
      WHERE
        "p"."merged_into" IS NULL AND COALESCE("m"."n", 0) = 0
    ) AS c3
  )
