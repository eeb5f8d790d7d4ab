"""The Postgres store's schema: the DuckDB store's tables, plus what several writers need.

Several processes write one Postgres store at once (`serve --role worker` on several machines),
so ids come from sequences instead of a counter row, and work that must survive a crash of
whichever process took it is kept in tables: `realtime_pending` (profiles with stored events
not yet evaluated) and leases on timers.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "event log, quarantine, profiles, identity graph, traits, memberships, sync, real time",
        """
        CREATE TABLE events (
            message_id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            source TEXT NOT NULL,
            event TEXT,
            event_key TEXT,
            name TEXT,
            user_id TEXT,
            anonymous_id TEXT,
            previous_id TEXT,
            group_id TEXT,
            profile_id TEXT NOT NULL,
            "timestamp" TIMESTAMPTZ NOT NULL,
            original_timestamp TIMESTAMPTZ NOT NULL,
            sent_at TIMESTAMPTZ,
            received_at TIMESTAMPTZ NOT NULL,
            properties JSONB,
            traits JSONB,
            context JSONB,
            integrations JSONB
        );
        CREATE INDEX events_profile ON events (profile_id, event_key, "timestamp");
        CREATE INDEX events_key_time ON events (event_key, "timestamp");
        CREATE INDEX events_received ON events (received_at);
        CREATE TABLE quarantine (
            quarantine_id TEXT PRIMARY KEY,
            quarantined_at TIMESTAMPTZ NOT NULL,
            source TEXT,
            origin TEXT NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            message_id TEXT,
            payload TEXT
        );
        CREATE TABLE profiles (
            profile_id TEXT PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL,
            merged_into TEXT
        );
        CREATE TABLE identities (
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            profile_id TEXT NOT NULL,
            first_seen TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (kind, value)
        );
        CREATE INDEX identities_profile ON identities (profile_id);
        CREATE TABLE profile_aliases (
            profile_id TEXT PRIMARY KEY,
            canonical_id TEXT NOT NULL
        );
        CREATE INDEX profile_aliases_canonical ON profile_aliases (canonical_id);
        CREATE TABLE merges (
            merged_at TIMESTAMPTZ NOT NULL,
            from_profile TEXT NOT NULL,
            into_profile TEXT NOT NULL,
            message_id TEXT NOT NULL,
            identifier_kind TEXT NOT NULL
        );
        CREATE TABLE profile_traits (
            profile_id TEXT NOT NULL,
            name TEXT NOT NULL,
            value JSONB,
            updated_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (profile_id, name)
        );
        CREATE TABLE identifier_rejections (
            message_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            reason TEXT NOT NULL,
            PRIMARY KEY (message_id, kind)
        );
        -- Every event with the profile it belongs to now (merges applied).
        CREATE VIEW profile_events AS
            SELECT e.*, coalesce(a.canonical_id, e.profile_id) AS canonical_profile_id
            FROM events e LEFT JOIN profile_aliases a ON a.profile_id = e.profile_id;

        -- One row per stay of one profile in one segment or audience; the current members
        -- are the rows whose exited_at IS NULL. A re-entry is a new row.
        CREATE TABLE memberships (
            kind TEXT NOT NULL,                 -- 'segment' | 'audience'
            name TEXT NOT NULL,
            profile_id TEXT NOT NULL,
            entered_at TIMESTAMPTZ NOT NULL,
            exited_at TIMESTAMPTZ,
            holdout BOOLEAN NOT NULL DEFAULT FALSE,
            run_id BIGINT NOT NULL              -- the compute run that recorded the entry
        );
        CREATE UNIQUE INDEX memberships_current ON memberships (kind, name, profile_id)
            WHERE exited_at IS NULL;
        CREATE INDEX memberships_profile ON memberships (profile_id);
        CREATE SEQUENCE compute_run_ids;
        CREATE TABLE compute_runs (
            run_id BIGINT PRIMARY KEY,
            run_at TIMESTAMPTZ NOT NULL,
            as_of TIMESTAMPTZ NOT NULL,
            duration_ms DOUBLE PRECISION NOT NULL,
            segments INTEGER NOT NULL,
            audiences INTEGER NOT NULL,
            entered BIGINT NOT NULL,
            exited BIGINT NOT NULL
        );

        CREATE SEQUENCE change_ids;
        CREATE SEQUENCE conversion_ids;
        CREATE SEQUENCE sync_run_ids;
        -- Changes due at destinations. Per (destination, audience, profile) at most one row is
        -- waiting (batch_id NULL) and at most one is in flight (batch_id set).
        CREATE TABLE outbox (
            change_id BIGINT PRIMARY KEY,
            destination TEXT NOT NULL,
            audience TEXT NOT NULL,
            profile_id TEXT NOT NULL,
            op TEXT NOT NULL,                   -- 'add' | 'remove'
            holdout BOOLEAN NOT NULL,
            changed_at TIMESTAMPTZ NOT NULL,
            planned_at TIMESTAMPTZ NOT NULL,
            batch_id TEXT,
            identifiers JSONB
        );
        CREATE INDEX outbox_key ON outbox (destination, audience, profile_id);
        CREATE INDEX outbox_batch ON outbox (batch_id);
        CREATE TABLE conversion_outbox (
            conversion_id BIGINT PRIMARY KEY,
            destination TEXT NOT NULL,
            message_id TEXT NOT NULL,
            name TEXT NOT NULL,
            event TEXT NOT NULL,
            "timestamp" TIMESTAMPTZ NOT NULL,
            profile_id TEXT NOT NULL,
            value DOUBLE PRECISION,
            currency TEXT,
            properties JSONB,
            context JSONB,
            planned_at TIMESTAMPTZ NOT NULL,
            batch_id TEXT,
            identifiers JSONB
        );
        CREATE INDEX conversion_outbox_batch ON conversion_outbox (destination, batch_id);
        CREATE TABLE conversion_ledger (
            destination TEXT NOT NULL,
            message_id TEXT NOT NULL,
            conversion_id BIGINT NOT NULL,
            PRIMARY KEY (destination, message_id)
        );
        CREATE TABLE sync_batches (
            batch_id TEXT PRIMARY KEY,
            destination TEXT NOT NULL,
            audience TEXT,
            kind TEXT NOT NULL,
            op TEXT,
            records INTEGER NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            first_attempt_at TIMESTAMPTZ,
            next_attempt_at TIMESTAMPTZ NOT NULL,
            last_error TEXT,
            holds_destination BOOLEAN DEFAULT TRUE
        );
        CREATE INDEX sync_batches_destination ON sync_batches (destination, next_attempt_at);
        CREATE TABLE destination_state (
            destination TEXT NOT NULL,
            audience TEXT NOT NULL,
            profile_id TEXT NOT NULL,
            status TEXT NOT NULL,               -- 'member' | 'rejected'
            holdout BOOLEAN NOT NULL,
            identifiers JSONB,
            reason TEXT,
            change_id BIGINT NOT NULL,
            batch_id TEXT NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (destination, audience, profile_id)
        );
        CREATE TABLE delivery_log (
            record_id BIGINT NOT NULL,
            kind TEXT NOT NULL,
            batch_id TEXT NOT NULL,
            destination TEXT NOT NULL,
            audience TEXT,
            profile_id TEXT NOT NULL,
            op TEXT NOT NULL,
            outcome TEXT NOT NULL,
            reason TEXT,
            attempts INTEGER NOT NULL,
            resolved_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE batch_results (
            batch_id TEXT PRIMARY KEY,
            destination TEXT NOT NULL,
            audience TEXT,
            kind TEXT NOT NULL,
            op TEXT,
            records INTEGER NOT NULL,
            acknowledged INTEGER NOT NULL,
            rejected INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            resolved_at TIMESTAMPTZ NOT NULL,
            stats JSONB
        );
        CREATE TABLE dead_letters (
            record_id BIGINT NOT NULL,
            kind TEXT NOT NULL,
            destination TEXT NOT NULL,
            audience TEXT,
            profile_id TEXT NOT NULL,
            op TEXT NOT NULL,
            reason TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            first_attempt_at TIMESTAMPTZ,
            dead_at TIMESTAMPTZ NOT NULL,
            batch_id TEXT,
            retried_at TIMESTAMPTZ
        );
        CREATE TABLE sync_runs (
            run_id BIGINT PRIMARY KEY,
            started_at TIMESTAMPTZ NOT NULL,
            duration_ms DOUBLE PRECISION NOT NULL,
            dry_run BOOLEAN NOT NULL,
            destination TEXT,
            audience TEXT,
            planned BIGINT NOT NULL,
            batches BIGINT NOT NULL,
            acknowledged BIGINT NOT NULL,
            rejected BIGINT NOT NULL,
            retrying BIGINT NOT NULL,
            dead_lettered BIGINT NOT NULL
        );

        -- When a (profile, segment) next changes on its own. A worker that takes a due timer
        -- leases it until `leased_until`; if it dies, the timer is taken again after that.
        CREATE TABLE timers (
            profile_id TEXT NOT NULL,
            segment TEXT NOT NULL,
            due_at TIMESTAMPTZ NOT NULL,
            leased_until TIMESTAMPTZ,
            PRIMARY KEY (profile_id, segment)
        );
        CREATE INDEX timers_due ON timers (due_at);
        -- Profiles with stored events not yet evaluated in real time, written in the
        -- transaction that stores the events. `version` grows with every such write, so an
        -- evaluation removes the row only if nothing was stored for the profile since it read.
        CREATE TABLE realtime_pending (
            profile_id TEXT PRIMARY KEY,
            version BIGINT NOT NULL DEFAULT 1,
            marked_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE realtime_state (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
        CREATE TABLE audience_runs (
            audience TEXT PRIMARY KEY,
            last_run_at TIMESTAMPTZ NOT NULL,
            run_id BIGINT NOT NULL
        );
        """,
    ),
    (
        2,
        "partial indexes for claims, plans and dead letters; versions of pending marks",
        """
        CREATE INDEX outbox_in_flight ON outbox (destination, audience, profile_id)
            WHERE batch_id IS NOT NULL;
        CREATE INDEX outbox_waiting ON outbox (destination, change_id) WHERE batch_id IS NULL;
        CREATE INDEX dead_letters_open ON dead_letters (destination, audience, profile_id)
            WHERE retried_at IS NULL;
        -- Versions of pending marks: never reused, so a cleared and re-made mark is new.
        CREATE SEQUENCE realtime_versions;
        """,
    ),
    (
        3,
        "the transaction that wrote each event; how far conversions are planned",
        """
        -- Events written before this migration have none: a first planning reads them all.
        ALTER TABLE events ADD COLUMN written_by xid8;
        ALTER TABLE events ALTER COLUMN written_by SET DEFAULT pg_current_xact_id();
        CREATE INDEX events_written_by ON events (written_by);
        -- Every event of `event` written by a transaction below `planned_below` has been
        -- planned as a conversion for `destination` (transactions below a snapshot's xmin are
        -- over, so none of them can still add one).
        CREATE TABLE conversion_cursors (
            destination TEXT NOT NULL,
            event TEXT NOT NULL,
            planned_below xid8 NOT NULL,
            PRIMARY KEY (destination, event)
        );
        """,
    ),
    (
        4,
        "the failures a batch's backoff counts: started over when its destination answers",
        """
        -- Failures since the destination last answered (a 2xx, or a Retry-After): the backoff
        -- exponent. `attempts` keeps counting every try.
        ALTER TABLE sync_batches ADD COLUMN backoff_attempts INTEGER DEFAULT 0;
        UPDATE sync_batches SET backoff_attempts = attempts;
        """,
    ),
    (
        5,
        "epoch_us(): an instant as microseconds since the epoch, as DuckDB names it",
        """
        CREATE OR REPLACE FUNCTION epoch_us(t timestamptz) RETURNS bigint
            LANGUAGE sql IMMUTABLE PARALLEL SAFE
            AS 'SELECT (extract(epoch from t) * 1000000)::bigint';
        """,
    ),
    (
        6,
        "test profiles: the cohort `validate` sends, kept out of counts until cleaned up",
        """
        -- Profiles `cohortsync validate` created (by their id when marked); `stats` leaves
        -- them out, `validate --cleanup` removes them and this row.
        CREATE TABLE test_profiles (
            profile_id TEXT PRIMARY KEY,
            label TEXT NOT NULL,
            marked_at TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    (
        7,
        "ad spend per day, destination and audience (`ingest-spend`), for the report's CAC",
        """
        -- Re-ingesting a (day, destination, audience) replaces its row.
        CREATE TABLE ad_spend (
            spend_date DATE NOT NULL,
            destination TEXT NOT NULL,
            audience TEXT NOT NULL,
            spend double precision NOT NULL,
            currency TEXT NOT NULL,
            ingested_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (spend_date, destination, audience)
        );
        """,
    ),
    (
        8,
        "what ad platforms report of each audience they hold, with when it was read",
        """
        -- One row per destination and audience: the latest size read back (Meta's approximate
        -- count bounds and operation status, at `sized_at`); the match-rate bucket of the
        -- latest upload diagnosed, and the error records of every one (Google's, the latest
        -- come in at `diagnosed_at`).
        CREATE TABLE platform_reports (
            destination TEXT NOT NULL,
            audience TEXT NOT NULL,
            size_low BIGINT,
            size_high BIGINT,
            operation_status TEXT,
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
