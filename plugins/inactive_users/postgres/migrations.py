"""Versioned, idempotent migrations of the state schema kept in the target cluster.

The tables keep the names and columns of the AWS sample Lambda (``user_login_status``,
``user_login_job_status``) so its users can carry their data over; extra columns hold what the
engine needs (role OID, what a lock changed, why).
"""

from __future__ import annotations

import hashlib

import psycopg
from psycopg import sql

# Each migration is (version, description, statements); ``{s}`` is the state schema identifier.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "state tables, history, run lease",
        (
            "CREATE SCHEMA IF NOT EXISTS {s}",
            "REVOKE ALL ON SCHEMA {s} FROM PUBLIC",
            """CREATE TABLE {s}.user_login_status (
                user_name text NOT NULL,
                last_login_time timestamptz NOT NULL DEFAULT now(),
                status text NOT NULL DEFAULT 'Active'
                    CHECK (status IN ('Active', 'Locked', 'ReadyToDelete')),
                role_oid oid,
                status_reason text,
                locked_at timestamptz,
                lock_method text CHECK (lock_method IN ('nologin', 'connection_limit')),
                prior_can_login boolean,
                prior_conn_limit integer,
                first_seen timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now(),
                CONSTRAINT user_login_status_pkey PRIMARY KEY (user_name) DEFERRABLE INITIALLY IMMEDIATE,
                CONSTRAINT user_login_status_oid_key UNIQUE (role_oid) DEFERRABLE INITIALLY IMMEDIATE
            )""",
            """CREATE TABLE {s}.user_login_job_status (
                instance_name text PRIMARY KEY,
                last_processed_time timestamptz NOT NULL,
                last_event_time timestamptz,
                updated_at timestamptz NOT NULL DEFAULT now()
            )""",
            """CREATE TABLE {s}.action_history (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                at timestamptz NOT NULL DEFAULT clock_timestamp(),
                run_id text,
                actor text NOT NULL DEFAULT session_user,
                action text NOT NULL,
                user_name text NOT NULL,
                role_oid oid,
                reason text,
                detail jsonb NOT NULL DEFAULT '{{}}'::jsonb
            )""",
            "CREATE INDEX ON {s}.action_history (user_name, at)",
            "CREATE INDEX ON {s}.action_history (run_id)",
            """CREATE FUNCTION {s}.append_only() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN RAISE EXCEPTION 'action_history is append-only'; END$$""",
            "REVOKE ALL ON FUNCTION {s}.append_only() FROM PUBLIC",
            """CREATE TRIGGER action_history_no_update BEFORE UPDATE OR DELETE ON {s}.action_history
               FOR EACH ROW EXECUTE FUNCTION {s}.append_only()""",
            """CREATE TRIGGER action_history_no_truncate BEFORE TRUNCATE ON {s}.action_history
               FOR EACH STATEMENT EXECUTE FUNCTION {s}.append_only()""",
            """CREATE TABLE {s}.run_lease (
                singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                run_id text NOT NULL,
                acquired_at timestamptz NOT NULL,
                expires_at timestamptz NOT NULL
            )""",
            """CREATE TABLE {s}.schema_version (
                version integer PRIMARY KEY,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )""",
        ),
    ),
    (
        2,
        "the planned roles of a run, read back by its action tasks",
        (
            """CREATE TABLE {s}.planned_action (
                run_id text NOT NULL,
                action text NOT NULL CHECK (action IN ('lock', 'delete')),
                user_name text NOT NULL,
                role_oid oid NOT NULL,
                planned_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (run_id, action, user_name)
            )""",
        ),
    ),
    (
        3,
        "room on each status page for HOT updates of last_login_time",
        # Applying logins rewrites a row per user who logged in; with half of each page free the
        # new version stays on its page and, as last_login_time is not indexed, no index changes
        # (about 4x faster for 100,000 users). Pages already full keep their rows until they move.
        ("ALTER TABLE {s}.user_login_status SET (fillfactor = 50)",),
    ),
    (
        4,
        "first-ingest logins, pending logins, unresolved retention gaps",
        (
            # A role first seen by sync takes the latest login its first ingest reads (the
            # lookback window), not the time sync saw it; now() only when the log shows none.
            "ALTER TABLE {s}.user_login_status "
            "ADD COLUMN first_ingest_pending boolean NOT NULL DEFAULT false",
            # Logins still inside the settle window at the last ingest: not yet counted, but their
            # roles are not locked or dropped until they are (replaced by every ingest).
            """CREATE TABLE {s}.pending_login (
                user_name text PRIMARY KEY,
                login_time timestamptz NOT NULL,
                instance_name text NOT NULL,
                recorded_at timestamptz NOT NULL DEFAULT now()
            )""",
            # Why logins of an instance may have aged out of its log group before they were read;
            # set by ingest, cleared only by a run with override_retention (recorded in history).
            "ALTER TABLE {s}.user_login_job_status ADD COLUMN retention_gap text",
            # What the last read saw: "connection authorized" events, and one (redacted) line of
            # them the log_line_prefix did not match, so the log-gap guard can tell a wrong format
            # from a missing export.
            "ALTER TABLE {s}.user_login_job_status ADD COLUMN connection_events bigint",
            "ALTER TABLE {s}.user_login_job_status ADD COLUMN unrecognised_example text",
        ),
    ),
    (
        5,
        "upcoming locks and drops: what was last alerted, which contacts were told",
        (
            # The upcoming set of the last alert that listed it (one row): a run with nothing to do
            # alerts only when its upcoming set differs, so nobody gets the same list every day.
            """CREATE TABLE {s}.upcoming_alert (
                singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                fingerprint text NOT NULL,
                roles integer NOT NULL,
                run_id text NOT NULL,
                alerted_at timestamptz NOT NULL DEFAULT now()
            )""",
            # A role's own contact is told once per upcoming action and due date.
            """CREATE TABLE {s}.contact_notice (
                user_name text NOT NULL,
                action text NOT NULL CHECK (action IN ('lock', 'drop')),
                due date NOT NULL,
                contact text NOT NULL,
                run_id text NOT NULL,
                sent_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (user_name, action, due)
            )""",
        ),
    ),
    (
        6,
        "where each instance's log was read, for a last read once it leaves the topology",
        (
            # The log group, its region and the streams read (NULL: every stream of the group). A
            # replica that is removed, or an instance taken out of the config, is read one last
            # time from its watermark to now before its row goes (recorded in action_history).
            "ALTER TABLE {s}.user_login_job_status ADD COLUMN log_group text",
            "ALTER TABLE {s}.user_login_job_status ADD COLUMN region_name text",
            "ALTER TABLE {s}.user_login_job_status ADD COLUMN log_streams text[]",
        ),
    ),
    (
        7,
        "each run's outcome: acted, nothing to do, refused or failed before its actions",
        (
            # One row per DAG run (a retry or a cleared task updates it): how many runs in a row have
            # not acted, since when, and why, for the failure alert and the fleet page.
            """CREATE TABLE {s}.run_outcome (
                run_id text PRIMARY KEY,
                outcome text NOT NULL CHECK (outcome IN ('acted', 'nothing_to_do', 'refused', 'failed')),
                task_id text,
                reason text,
                recorded_at timestamptz NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX ON {s}.run_outcome (recorded_at)",
        ),
    ),
)

LATEST = MIGRATIONS[-1][0]


def lock_key(schema: str, purpose: str) -> int:
    """A stable signed 64-bit advisory-lock key for this state schema and purpose."""
    digest = hashlib.blake2b(f"inactive_users:{schema}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def current_version(conn: psycopg.Connection, schema: str) -> int:
    """0 when the schema has never been migrated."""
    table = sql.Identifier(schema, "schema_version")
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table.as_string(conn)]).fetchone()
    if not row or not row[0]:
        return 0
    version = conn.execute(sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(table)).fetchone()
    return int(version[0]) if version else 0


def _schema_exists(conn: psycopg.Connection, schema: str) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)", [schema]).fetchone()
    return bool(row and row[0])


def pending(conn: psycopg.Connection, schema: str) -> list[int]:
    have = current_version(conn, schema)
    return [v for v, _, _ in MIGRATIONS if v > have]


def migrate(conn: psycopg.Connection, schema: str) -> list[int]:
    """Apply the missing migrations in one transaction; returns the versions applied.

    Serialised by an advisory lock so two runs starting at once cannot both migrate.
    """
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(schema, "migrate")])
        have = current_version(conn, schema)
        ident = sql.Identifier(schema)
        for version, description, statements in MIGRATIONS:
            if version <= have:
                continue
            for statement in statements:
                if statement.startswith("CREATE SCHEMA IF NOT EXISTS") and _schema_exists(conn, schema):
                    continue  # a DBA may create it for the job: then no CREATE on the database is needed
                conn.execute(sql.SQL(statement).format(s=ident))
            conn.execute(
                sql.SQL("INSERT INTO {}.schema_version (version, description) VALUES (%s, %s)").format(ident),
                [version, description],
            )
            applied.append(version)
    return applied
