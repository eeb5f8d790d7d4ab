"""The store's schema: numbered migrations, each applied once and recorded in schema_migrations."""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "event log, quarantine, profiles, identity graph, traits",
        """
        CREATE TABLE events (
            message_id VARCHAR PRIMARY KEY,
            type VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            event VARCHAR,
            event_key VARCHAR,
            name VARCHAR,
            user_id VARCHAR,
            anonymous_id VARCHAR,
            previous_id VARCHAR,
            group_id VARCHAR,
            profile_id VARCHAR NOT NULL,
            "timestamp" TIMESTAMPTZ NOT NULL,
            original_timestamp TIMESTAMPTZ NOT NULL,
            sent_at TIMESTAMPTZ,
            received_at TIMESTAMPTZ NOT NULL,
            properties JSON,
            traits JSON,
            context JSON,
            integrations JSON
        );
        CREATE TABLE quarantine (
            quarantine_id VARCHAR PRIMARY KEY,
            quarantined_at TIMESTAMPTZ NOT NULL,
            source VARCHAR,
            origin VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            detail VARCHAR NOT NULL,
            message_id VARCHAR,
            payload VARCHAR
        );
        CREATE TABLE profiles (
            profile_id VARCHAR PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL,
            merged_into VARCHAR
        );
        CREATE TABLE identities (
            kind VARCHAR NOT NULL,
            value VARCHAR NOT NULL,
            profile_id VARCHAR NOT NULL,
            first_seen TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (kind, value)
        );
        CREATE TABLE profile_aliases (
            profile_id VARCHAR PRIMARY KEY,
            canonical_id VARCHAR NOT NULL
        );
        CREATE TABLE merges (
            merged_at TIMESTAMPTZ NOT NULL,
            from_profile VARCHAR NOT NULL,
            into_profile VARCHAR NOT NULL,
            message_id VARCHAR NOT NULL,
            identifier_kind VARCHAR NOT NULL
        );
        CREATE TABLE profile_traits (
            profile_id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            value JSON,
            updated_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (profile_id, name)
        );
        CREATE TABLE identifier_rejections (
            message_id VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            PRIMARY KEY (message_id, kind)
        );
        -- Every event with the profile it belongs to now (merges applied).
        CREATE VIEW profile_events AS
            SELECT e.*, coalesce(a.canonical_id, e.profile_id) AS canonical_profile_id
            FROM events e LEFT JOIN profile_aliases a ON a.profile_id = e.profile_id;
        """,
    ),
    (
        2,
        "membership history of segments and audiences, compute runs",
        """
        -- One row per stay of one profile in one segment or audience; the current members
        -- are the rows whose exited_at IS NULL. A re-entry is a new row.
        CREATE TABLE memberships (
            kind VARCHAR NOT NULL,              -- 'segment' | 'audience'
            name VARCHAR NOT NULL,
            profile_id VARCHAR NOT NULL,
            entered_at TIMESTAMPTZ NOT NULL,
            exited_at TIMESTAMPTZ,
            holdout BOOLEAN NOT NULL DEFAULT FALSE,
            run_id BIGINT NOT NULL              -- the compute run that recorded the entry
        );
        CREATE TABLE compute_runs (
            run_id BIGINT PRIMARY KEY,
            run_at TIMESTAMPTZ NOT NULL,        -- when the compute ran
            as_of TIMESTAMPTZ NOT NULL,         -- the instant it computed membership for
            duration_ms DOUBLE NOT NULL,
            segments INTEGER NOT NULL,
            audiences INTEGER NOT NULL,
            entered BIGINT NOT NULL,
            exited BIGINT NOT NULL
        );
        """,
    ),
    (
        3,
        "sync: outbox, batches, destination state, delivery log, dead letters, runs, conversions",
        """
        -- Monotonic ids handed out by the single writer (change_id, conversion_id, run_id).
        CREATE TABLE counters (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL);
        -- Changes due at destinations. Per (destination, audience, profile) at most one row is
        -- waiting (batch_id NULL: planning coalesces it to the latest desired state) and at
        -- most one is in flight (batch_id set: claimed into a batch, resent until resolved).
        CREATE TABLE outbox (
            change_id BIGINT PRIMARY KEY,
            destination VARCHAR NOT NULL,
            audience VARCHAR NOT NULL,
            profile_id VARCHAR NOT NULL,
            op VARCHAR NOT NULL,                -- 'add' | 'remove'
            holdout BOOLEAN NOT NULL,
            changed_at TIMESTAMPTZ NOT NULL,    -- when membership changed
            planned_at TIMESTAMPTZ NOT NULL,
            batch_id VARCHAR,
            identifiers JSON                    -- normalised identifiers, fixed when claimed
        );
        -- Conversions due at destinations; a (destination, message_id) is queued once, ever.
        CREATE TABLE conversion_outbox (
            conversion_id BIGINT PRIMARY KEY,
            destination VARCHAR NOT NULL,
            message_id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            event VARCHAR NOT NULL,
            "timestamp" TIMESTAMPTZ NOT NULL,
            profile_id VARCHAR NOT NULL,
            value DOUBLE,
            currency VARCHAR,
            properties JSON,
            context JSON,
            planned_at TIMESTAMPTZ NOT NULL,
            batch_id VARCHAR,
            identifiers JSON
        );
        CREATE TABLE conversion_ledger (
            destination VARCHAR NOT NULL,
            message_id VARCHAR NOT NULL,
            conversion_id BIGINT NOT NULL,
            PRIMARY KEY (destination, message_id)
        );
        -- A claimed unit of delivery. Its rows and bytes stay the same on every attempt.
        CREATE TABLE sync_batches (
            batch_id VARCHAR PRIMARY KEY,
            destination VARCHAR NOT NULL,
            audience VARCHAR,                   -- NULL for conversions
            kind VARCHAR NOT NULL,              -- 'changes' | 'conversions'
            op VARCHAR,
            records INTEGER NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            first_attempt_at TIMESTAMPTZ,
            next_attempt_at TIMESTAMPTZ NOT NULL,
            last_error VARCHAR
        );
        -- What each destination acknowledged holding, with the identifiers it was given.
        CREATE TABLE destination_state (
            destination VARCHAR NOT NULL,
            audience VARCHAR NOT NULL,
            profile_id VARCHAR NOT NULL,
            status VARCHAR NOT NULL,            -- 'member' | 'rejected'
            holdout BOOLEAN NOT NULL,
            identifiers JSON,
            reason VARCHAR,
            change_id BIGINT NOT NULL,
            batch_id VARCHAR NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (destination, audience, profile_id)
        );
        -- One row per record a destination resolved (acknowledged or rejected).
        CREATE TABLE delivery_log (
            record_id BIGINT NOT NULL,          -- change_id or conversion_id
            kind VARCHAR NOT NULL,              -- 'changes' | 'conversions'
            batch_id VARCHAR NOT NULL,
            destination VARCHAR NOT NULL,
            audience VARCHAR,
            profile_id VARCHAR NOT NULL,
            op VARCHAR NOT NULL,                -- 'add' | 'remove' | conversion name
            outcome VARCHAR NOT NULL,           -- 'acknowledged' | 'rejected'
            reason VARCHAR,
            attempts INTEGER NOT NULL,
            resolved_at TIMESTAMPTZ NOT NULL
        );
        -- One row per batch a destination answered, with what the platform reported
        -- (num_received, num_invalid_entries, events_received, ...).
        CREATE TABLE batch_results (
            batch_id VARCHAR PRIMARY KEY,
            destination VARCHAR NOT NULL,
            audience VARCHAR,
            kind VARCHAR NOT NULL,
            op VARCHAR,
            records INTEGER NOT NULL,
            acknowledged INTEGER NOT NULL,
            rejected INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            resolved_at TIMESTAMPTZ NOT NULL,
            stats JSON
        );
        CREATE TABLE dead_letters (
            record_id BIGINT NOT NULL,
            kind VARCHAR NOT NULL,
            destination VARCHAR NOT NULL,
            audience VARCHAR,
            profile_id VARCHAR NOT NULL,
            op VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            attempts INTEGER NOT NULL,
            first_attempt_at TIMESTAMPTZ,
            dead_at TIMESTAMPTZ NOT NULL,
            batch_id VARCHAR,
            retried_at TIMESTAMPTZ              -- set by `sync --retry-dead`
        );
        CREATE TABLE sync_runs (
            run_id BIGINT PRIMARY KEY,
            started_at TIMESTAMPTZ NOT NULL,
            duration_ms DOUBLE NOT NULL,
            dry_run BOOLEAN NOT NULL,
            destination VARCHAR,
            audience VARCHAR,
            planned BIGINT NOT NULL,
            batches BIGINT NOT NULL,
            acknowledged BIGINT NOT NULL,
            rejected BIGINT NOT NULL,
            retrying BIGINT NOT NULL,
            dead_lettered BIGINT NOT NULL
        );
        """,
    ),
    (
        4,
        "real time: per-profile timers, the evaluation cursor",
        """
        -- When a (profile, segment) next changes on its own (a cart add ageing out of 6h).
        CREATE TABLE timers (
            profile_id VARCHAR NOT NULL,
            segment VARCHAR NOT NULL,
            due_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (profile_id, segment)
        );
        -- Small named values of the real-time path (the receive-time cursor of evaluation).
        CREATE TABLE realtime_state (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL);
        """,
    ),
    (
        5,
        "scheduled refreshes: when each audience was last computed",
        """
        CREATE TABLE audience_runs (
            audience VARCHAR PRIMARY KEY,
            last_run_at TIMESTAMPTZ NOT NULL,
            run_id BIGINT NOT NULL
        );
        """,
    ),
    (
        6,
        "a batch of records retried one by one does not hold back its destination",
        """
        ALTER TABLE sync_batches ADD COLUMN holds_destination BOOLEAN DEFAULT TRUE;
        """,
    ),
    (
        7,
        "per-profile event summaries, and summaries of the properties segments read",
        """
        -- Per stored profile id (before merges: a merge never rewrites them) and event key,
        -- how many events and their first and last timestamps. Ingest appends one row per
        -- (profile, event) of each batch; compaction folds the rows of a pair into one.
        -- A row whose events all lie at or before an instant answers "as of" it exactly.
        CREATE TABLE event_summaries (
            profile_id VARCHAR NOT NULL,
            event_key VARCHAR NOT NULL,
            n BIGINT NOT NULL,
            first_ts TIMESTAMPTZ NOT NULL,
            last_ts TIMESTAMPTZ NOT NULL
        );
        -- The same per value of a summarised property (its JSON text; absent and null are
        -- left out), for whole-history traits (sum, avg, min, max, count, most_frequent).
        CREATE TABLE property_summaries (
            profile_id VARCHAR NOT NULL,
            event_key VARCHAR NOT NULL,
            prop VARCHAR NOT NULL,
            value VARCHAR NOT NULL,
            n BIGINT NOT NULL,
            first_ts TIMESTAMPTZ NOT NULL,
            last_ts TIMESTAMPTZ NOT NULL
        );
        -- The properties summarised (`prop` as segments name it, `path` its JSON pointer).
        CREATE TABLE summarised_properties (
            event_key VARCHAR NOT NULL,
            prop VARCHAR NOT NULL,
            path VARCHAR NOT NULL,
            PRIMARY KEY (event_key, prop)
        );
        INSERT INTO event_summaries
            SELECT profile_id, event_key, count(*), min("timestamp"), max("timestamp")
            FROM events WHERE event_key IS NOT NULL
            GROUP BY profile_id, event_key ORDER BY event_key, profile_id;
        """,
    ),
    (
        8,
        "the failures a batch's backoff counts: started over when its destination answers",
        """
        -- Failures since the destination last answered (a 2xx, or a Retry-After): the backoff
        -- exponent. `attempts` keeps counting every try.
        ALTER TABLE sync_batches ADD COLUMN backoff_attempts INTEGER DEFAULT 0;
        UPDATE sync_batches SET backoff_attempts = attempts;
        """,
    ),
    (
        9,
        "timers leased while evaluated; compute run ids from the counters",
        """
        -- A taken timer is hidden until its profile's outcome is recorded (which replaces it),
        -- or until the lease runs out if the evaluation failed.
        ALTER TABLE timers ADD COLUMN leased_until TIMESTAMPTZ;
        INSERT OR REPLACE INTO counters
            SELECT 'compute_run', coalesce(max(run_id), 0) FROM compute_runs;
        """,
    ),
    (
        10,
        "test profiles: the cohort `validate` sends, kept out of counts until cleaned up",
        """
        -- Profiles `cohortsync validate` created (by their id when marked); `stats` leaves
        -- them out, `validate --cleanup` removes them and this row.
        CREATE TABLE test_profiles (
            profile_id VARCHAR PRIMARY KEY,
            label VARCHAR NOT NULL,
            marked_at TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    (
        11,
        "ad spend per day, destination and audience (`ingest-spend`), for the report's CAC",
        """
        -- Re-ingesting a (day, destination, audience) replaces its row.
        CREATE TABLE ad_spend (
            spend_date DATE NOT NULL,
            destination VARCHAR NOT NULL,
            audience VARCHAR NOT NULL,
            spend DOUBLE NOT NULL,
            currency VARCHAR NOT NULL,
            ingested_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (spend_date, destination, audience)
        );
        """,
    ),
    (
        12,
        "what ad platforms report of each audience they hold, with when it was read",
        """
        -- One row per destination and audience: the latest size read back (Meta's approximate
        -- count bounds and operation status, at `sized_at`); the match-rate bucket of the
        -- latest upload diagnosed, and the error records of every one (Google's, the latest
        -- come in at `diagnosed_at`).
        CREATE TABLE platform_reports (
            destination VARCHAR NOT NULL,
            audience VARCHAR NOT NULL,
            size_low BIGINT,
            size_high BIGINT,
            operation_status VARCHAR,
            sized_at TIMESTAMPTZ,
            match_rate_low BIGINT,
            match_rate_high BIGINT,
            error_records BIGINT,
            diagnosed_at TIMESTAMPTZ,
            PRIMARY KEY (destination, audience)
        );
        -- Diagnostics added to batch results before this table: their figures, no read time.
        INSERT INTO platform_reports (destination, audience, match_rate_low, match_rate_high,
                                      error_records)
        SELECT destination, audience,
            (array_agg(CAST(stats ->> 'match_rate_low' AS BIGINT) ORDER BY resolved_at DESC)
                FILTER (WHERE stats ->> 'match_rate_low' IS NOT NULL))[1],
            (array_agg(CAST(stats ->> 'match_rate_high' AS BIGINT) ORDER BY resolved_at DESC)
                FILTER (WHERE stats ->> 'match_rate_low' IS NOT NULL))[1],
            sum(coalesce(CAST(stats ->> 'error_records' AS BIGINT), 0))
                FILTER (WHERE stats ->> 'records_processed' IS NOT NULL)
        FROM batch_results
        WHERE audience IS NOT NULL AND kind = 'changes'
          AND (stats ->> 'records_processed' IS NOT NULL OR stats ->> 'match_rate_low' IS NOT NULL)
        GROUP BY destination, audience;
        """,
    ),
)

LATEST_VERSION = MIGRATIONS[-1][0]
