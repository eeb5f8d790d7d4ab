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
)

LATEST_VERSION = MIGRATIONS[-1][0]
