"""Reads of the catalog and set-based writes of the state tables (the Postgres I/O shell).

Every write here is a fixed number of statements for any number of roles: the busiest clusters
have tens of thousands of login roles and a loop of round trips would dominate the run. Large
inputs go as binary arrays (``%b``), binary COPY or one JSON document: as text arrays, formatting and
parsing them costs more than the statements themselves.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from inactive_users.core.policy import LOCKED, READY_TO_DELETE, RoleInfo, UserState
from inactive_users.postgres.migrations import lock_key


class ConcurrentRunError(RuntimeError):
    """Another run holds the cluster's action lock."""


def t(schema: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table)


def take_action_lock(conn: psycopg.Connection, schema: str, lease_run_id: str | None = None) -> None:
    """Inside a transaction: make sure no other run acts on this cluster at the same time.

    With ``lease_run_id`` (a DAG run, whose tasks run in separate processes) the run must also hold
    the cluster's run lease, taken by its preflight task.
    """
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", [lock_key(schema, "act")]).fetchone()
    if not row or not row[0]:
        raise ConcurrentRunError(
            f"another inactive_users run holds the action lock for state schema {schema!r} "
            "on this cluster; this run changed nothing"
        )
    if lease_run_id is None:
        return
    holder = conn.execute(
        sql.SQL("SELECT run_id, expires_at FROM {} WHERE expires_at > now()").format(t(schema, "run_lease"))
    ).fetchone()
    if holder is None or holder[0] != lease_run_id:
        who = f"run {holder[0]!r} (until {holder[1].isoformat()})" if holder else "no run (it expired)"
        raise ConcurrentRunError(
            f"run {lease_run_id!r} does not hold the run lease of this cluster; {who} holds it. "
            "This run changed nothing; re-run it from preflight."
        )


def acquire_lease(conn: psycopg.Connection, schema: str, run_id: str, ttl: timedelta) -> None:
    """Take (or renew) the cluster's run lease; fail if another live run holds it."""
    with conn.transaction():
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {0} AS l (singleton, run_id, acquired_at, expires_at) "
                "VALUES (true, %s, now(), now() + %s) "
                "ON CONFLICT (singleton) DO UPDATE SET run_id = EXCLUDED.run_id, "
                "acquired_at = now(), expires_at = EXCLUDED.expires_at "
                "WHERE l.run_id = EXCLUDED.run_id OR l.expires_at <= now() RETURNING run_id"
            ).format(t(schema, "run_lease")),
            [run_id, ttl],
        ).fetchone()
        if row is not None:
            return
        holder = conn.execute(
            sql.SQL("SELECT run_id, acquired_at, expires_at FROM {}").format(t(schema, "run_lease"))
        ).fetchone()
    assert holder is not None
    raise ConcurrentRunError(
        f"another run ({holder[0]!r}, started {holder[1].isoformat()}) holds the run lease of this "
        f"cluster until {holder[2].isoformat()}; this run stops without changing anything"
    )


def release_lease(conn: psycopg.Connection, schema: str, run_id: str) -> bool:
    cur = conn.execute(sql.SQL("DELETE FROM {} WHERE run_id = %s").format(t(schema, "run_lease")), [run_id])
    return cur.rowcount > 0


_ROLES_SQL = """
WITH RECURSIVE exempt(oid, via) AS (
    SELECT r.oid, r.rolname::text FROM pg_roles r WHERE r.rolname = ANY(%(groups)s::text[])
    UNION
    SELECT m.member, e.via FROM pg_auth_members m JOIN exempt e ON m.roleid = e.oid
)
SELECT r.oid::bigint, r.rolname::text, r.rolcanlogin, r.rolsuper, r.rolconnlimit,
       (SELECT min(e.via) FROM exempt e WHERE e.oid = r.oid)
FROM pg_roles r
"""


def fetch_roles(conn: psycopg.Connection, exempt_groups: Iterable[str]) -> dict[int, RoleInfo]:
    """All roles with what the policy needs, exempt-group membership resolved transitively."""
    rows = conn.execute(_ROLES_SQL, {"groups": list(exempt_groups)}).fetchall()
    return {r[0]: RoleInfo(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows}


def fetch_states(conn: psycopg.Connection, schema: str) -> list[UserState]:
    rows = conn.execute(
        sql.SQL(
            "SELECT user_name, role_oid::bigint, last_login_time, status FROM {} ORDER BY user_name"
        ).format(t(schema, "user_login_status"))
    ).fetchall()
    return [UserState(r[0], r[1], r[2], r[3]) for r in rows]


def held_oids(conn: psycopg.Connection, schema: str) -> set[int]:
    """Roles we locked or flagged: tracked even though they can no longer log in.

    Only those rows are read: a sync of 100,000 roles spent half its time loading every status.
    """
    rows = conn.execute(
        sql.SQL("SELECT role_oid::bigint FROM {} WHERE role_oid IS NOT NULL AND status = ANY(%s)").format(
            t(schema, "user_login_status")
        ),
        [[LOCKED, READY_TO_DELETE]],
    ).fetchall()
    return {r[0] for r in rows}


def active_session_oids(conn: psycopg.Connection) -> set[int]:
    """Roles with a session open now on this instance (pooled connections never log in again).

    Any backend running as a role counts: a job user without ``pg_read_all_stats`` (the README's)
    sees another role's backend with its ``usesysid`` but not its ``backend_type``, so a filter on
    the type would hide every other role's session from it.
    """
    rows = conn.execute(
        "SELECT DISTINCT usesysid::bigint FROM pg_stat_activity "
        "WHERE usesysid IS NOT NULL AND pid <> pg_backend_pid()"
    ).fetchall()
    return {r[0] for r in rows}


def wal_receivers(conn: psycopg.Connection) -> tuple[str, list[str]]:
    """This server (its postmaster's start time, as an identity) and the application names of what
    receives its WAL by physical replication: its standbys, or WAL archivers such as pg_receivewal.

    A logical replication connection names a database and is not counted. Every user may see
    these rows (pid, database, application_name): no grant is needed.
    """
    row = conn.execute(
        "SELECT pg_postmaster_start_time()::text, ARRAY(SELECT coalesce(r.application_name, '') "
        "FROM pg_stat_replication r JOIN pg_stat_activity a USING (pid) WHERE a.datid IS NULL ORDER BY 1)"
    ).fetchone()
    assert row is not None
    return str(row[0]), list(row[1])


def job_user(conn: psycopg.Connection) -> tuple[str, str]:
    row = conn.execute("SELECT session_user::text, current_user::text").fetchone()
    assert row is not None
    return row[0], row[1]


@dataclass
class SyncResult:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    unlocked_externally: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    tracked: int = 0

    def changes(self) -> int:
        return (
            len(self.added)
            + len(self.removed)
            + len(self.renamed)
            + len(self.unlocked_externally)
            + len(self.adopted)
        )


# One statement: match tracked rows to the roles that should be tracked (by OID; by name for rows
# carried over from the AWS sample, which have no OID), then remove, rename/reconcile and add,
# writing a history row for every change. The deferrable keys let a role dropped and re-created
# under the same name be removed and added in the same statement.
_SYNC_SQL = """
WITH cand AS (
    SELECT * FROM unnest(%(oids)b::oid[], %(names)b::text[], %(can_login)b::bool[], %(conn_limit)b::int[])
        AS c(oid, name, can_login, conn_limit)
),
matched AS (
    SELECT u.user_name, u.role_oid, u.status, u.lock_method,
           coalesce(c1.oid, c2.oid) AS c_oid, coalesce(c1.name, c2.name) AS c_name,
           coalesce(c1.can_login, c2.can_login) AS c_can_login,
           coalesce(c1.conn_limit, c2.conn_limit) AS c_conn_limit
    FROM {status} u
    LEFT JOIN cand c1 ON c1.oid = u.role_oid
    LEFT JOIN cand c2 ON u.role_oid IS NULL AND c2.name = u.user_name
),
excluded AS (
    SELECT * FROM unnest(%(excluded_oids)b::oid[], %(excluded_reasons)b::text[]) AS x(oid, reason)
),
removed AS (
    DELETE FROM {status} u USING matched m
    WHERE u.user_name = m.user_name AND m.c_oid IS NULL
    RETURNING u.user_name, u.role_oid,
              CASE WHEN EXISTS (SELECT 1 FROM excluded x WHERE x.oid = u.role_oid)
                   THEN 'excluded: ' || (SELECT x.reason FROM excluded x WHERE x.oid = u.role_oid)
                   WHEN EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = u.role_oid)
                   THEN 'no longer a candidate (cannot log in, or excluded)'
                   ELSE 'role no longer exists' END AS reason
),
changed AS (
    SELECT m.*,
           m.status IN ('Locked', 'ReadyToDelete') AND m.c_can_login
               AND (m.lock_method IS DISTINCT FROM 'connection_limit' OR m.c_conn_limit <> 0) AS unlocked
    FROM matched m
    WHERE m.c_oid IS NOT NULL
),
updated AS (
    UPDATE {status} u
    SET user_name = c.c_name,
        role_oid = c.c_oid,
        status = CASE WHEN c.unlocked THEN 'Active' ELSE u.status END,
        last_login_time = CASE WHEN c.unlocked THEN now() ELSE u.last_login_time END,
        status_reason = CASE WHEN c.unlocked THEN 'unlocked outside inactive_users' ELSE u.status_reason END,
        locked_at = CASE WHEN c.unlocked THEN NULL ELSE u.locked_at END,
        updated_at = now()
    FROM changed c
    WHERE u.user_name = c.user_name
      AND (c.c_name <> c.user_name OR c.role_oid IS NULL OR c.unlocked)
    RETURNING c.user_name AS old_name, u.user_name AS new_name, u.role_oid,
              c.role_oid IS NULL AS adopted, c.unlocked
),
added AS (
    INSERT INTO {status} (user_name, last_login_time, status, role_oid, status_reason, first_ingest_pending)
    SELECT c.name, now(), 'Active', c.oid, 'new role', true
    FROM cand c
    WHERE NOT EXISTS (SELECT 1 FROM matched m WHERE m.c_oid = c.oid)
    RETURNING user_name, role_oid
),
events AS (
    SELECT 'sync_remove' AS action, user_name, role_oid, reason, '{{}}'::jsonb AS detail FROM removed
    UNION ALL
    SELECT 'sync_add', user_name, role_oid, 'new login role', '{{}}'::jsonb FROM added
    UNION ALL
    SELECT 'sync_rename', new_name, role_oid, 'role renamed', jsonb_build_object('old_name', old_name)
    FROM updated WHERE old_name <> new_name
    UNION ALL
    SELECT 'sync_adopt', new_name, role_oid, 'row without OID matched by name', '{{}}'::jsonb
    FROM updated WHERE adopted
    UNION ALL
    SELECT 'sync_unlocked_externally', new_name, role_oid, 'role can log in again', '{{}}'::jsonb
    FROM updated WHERE unlocked
),
history AS (
    INSERT INTO {history} (run_id, action, user_name, role_oid, reason, detail)
    SELECT %(run_id)s, action, user_name, role_oid, reason, detail FROM events
)
SELECT action, user_name, detail->>'old_name' FROM events
"""


def sync(
    conn: psycopg.Connection,
    schema: str,
    tracked: Sequence[RoleInfo],
    run_id: str,
    excluded: Mapping[int, str] | None = None,
) -> SyncResult:
    """Make the status table list exactly ``tracked``; one round trip whatever their number.

    ``excluded`` (OID: reason) says why a tracked row leaves, in its history row.
    """
    excluded = excluded or {}
    query = sql.SQL(_SYNC_SQL).format(
        status=t(schema, "user_login_status"), history=t(schema, "action_history")
    )
    rows = conn.execute(
        query,
        {
            "oids": [r.oid for r in tracked],
            "names": [r.name for r in tracked],
            "can_login": [r.can_login for r in tracked],
            "conn_limit": [r.conn_limit for r in tracked],
            "excluded_oids": list(excluded),
            "excluded_reasons": list(excluded.values()),
            "run_id": run_id,
        },
    ).fetchall()
    result = SyncResult(tracked=len(tracked))
    for action, name, old_name in rows:
        if action == "sync_add":
            result.added.append(name)
        elif action == "sync_remove":
            result.removed.append(name)
        elif action == "sync_rename":
            result.renamed.append((old_name, name))
        elif action == "sync_adopt":
            result.adopted.append(name)
        else:
            result.unlocked_externally.append(name)
    return result


def apply_logins(conn: psycopg.Connection, schema: str, logins: Mapping[str, datetime]) -> int:
    """``last_login_time = GREATEST(old, seen)`` for all users at once; returns rows moved forward.

    A role on its first ingest (``first_ingest_pending``) takes the login as it is, even an older
    one than the time sync first saw it: the lookback window shows its real last login.

    ``logins`` maps user names to aware datetimes. They travel in binary: COPY into a temporary
    table, then one ``UPDATE ... FROM`` (text arrays cost more than the update itself: formatting
    and parsing 100,000 timestamps takes about 0.4 s; binary arrays cost about 0.1 s more than COPY,
    as ``unnest`` spills its rows to disk). A row is written only when its time moves forward, so
    re-reading the overlap window writes nothing. The status table's fillfactor (migration 3)
    keeps each new version on its page and ``last_login_time`` is not indexed: HOT updates, with no
    index entries to add. A job user without the TEMPORARY privilege on the database gets the
    binary arrays instead of the temporary table.
    """
    if not logins:
        return 0
    apply = sql.SQL(
        "UPDATE {} u SET last_login_time = l.seen, first_ingest_pending = false, updated_at = now() "
        "FROM {} AS l(user_name, seen) "
        "WHERE u.user_name = l.user_name AND (l.seen > u.last_login_time OR u.first_ingest_pending)"
    )
    status = t(schema, "user_login_status")
    with conn.transaction():  # a savepoint in the caller's transaction; its own one in autocommit
        row = conn.execute("SELECT has_database_privilege(current_database(), 'TEMPORARY')").fetchone()
        if not (row and row[0]):
            source = sql.SQL("unnest(%b::text[], %b::timestamptz[])")
            return conn.execute(apply.format(status, source), [list(logins), list(logins.values())]).rowcount
        batch = sql.Identifier("pg_temp", "inactive_users_logins")
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (user_name text NOT NULL, seen timestamptz NOT NULL) ON COMMIT DROP"
            ).format(batch)
        )
        with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(batch)) as copy:
            copy.set_types(["text", "timestamptz"])
            for login in logins.items():
                copy.write_row(login)
        moved = conn.execute(apply.format(status, batch)).rowcount
        conn.execute(sql.SQL("DROP TABLE {}").format(batch))  # ON COMMIT DROP is too late for a second call
    return moved


def touch_active_sessions(conn: psycopg.Connection, schema: str, oids: Collection[int]) -> list[str]:
    """Roles with a session open now count as active now."""
    if not oids:
        return []
    rows = conn.execute(
        sql.SQL(
            "UPDATE {} u SET last_login_time = now(), updated_at = now() "
            "WHERE u.role_oid = ANY(%s::oid[]) AND u.last_login_time < now() RETURNING user_name"
        ).format(t(schema, "user_login_status")),
        [list(oids)],
    ).fetchall()
    return [r[0] for r in rows]


def end_first_ingest(conn: psycopg.Connection, schema: str) -> int:
    """Roles whose first ingest is done keep ``GREATEST`` from now on (their time stays now())."""
    return conn.execute(
        sql.SQL("UPDATE {} SET first_ingest_pending = false WHERE first_ingest_pending").format(
            t(schema, "user_login_status")
        )
    ).rowcount


def save_pending_logins(
    conn: psycopg.Connection, schema: str, pending: Mapping[str, tuple[datetime, str]]
) -> None:
    """Replace the logins still inside the settle window: (user: (login time, instance))."""
    table = t(schema, "pending_login")
    conn.execute(sql.SQL("DELETE FROM {}").format(table))
    if pending:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (user_name, login_time, instance_name) "
                "SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::text[])"
            ).format(table),
            [list(pending), [p[0] for p in pending.values()], [p[1] for p in pending.values()]],
        )


def fetch_pending_logins(conn: psycopg.Connection, schema: str) -> dict[str, datetime]:
    rows = conn.execute(
        sql.SQL("SELECT user_name, login_time FROM {}").format(t(schema, "pending_login"))
    ).fetchall()
    return {r[0]: r[1] for r in rows}


@dataclass(frozen=True)
class LogLocation:
    """Where an instance's connection log is read: a log group in a region, some of its streams
    (None: every stream)."""

    log_group: str
    region_name: str | None
    log_streams: tuple[str, ...] | None


@dataclass(frozen=True)
class Watermark:
    instance: str
    last_processed: datetime
    last_event: datetime | None
    retention_gap: str | None = None  # why logins may be missing; cleared only by an override
    connection_events: int | None = None  # "connection authorized" events in the last read
    unrecognised_example: str | None = None  # one of them the prefix did not match (redacted)
    location: LogLocation | None = None  # None: not recorded (a version before migration 6)


def fetch_watermarks(conn: psycopg.Connection, schema: str) -> dict[str, Watermark]:
    rows = conn.execute(
        sql.SQL(
            "SELECT instance_name, last_processed_time, last_event_time, retention_gap, "
            "connection_events, unrecognised_example, log_group, region_name, log_streams FROM {}"
        ).format(t(schema, "user_login_job_status"))
    ).fetchall()
    return {
        r[0]: Watermark(
            r[0],
            r[1],
            r[2],
            retention_gap=r[3],
            connection_events=r[4],
            unrecognised_example=r[5],
            location=LogLocation(r[6], r[7], None if r[8] is None else tuple(r[8])) if r[6] else None,
        )
        for r in rows
    }


def retire_watermarks(
    conn: psycopg.Connection, schema: str, run_id: str, retired: Mapping[str, tuple[Watermark, str]]
) -> None:
    """Stop reading instances that left the topology: their rows go, each with a history row saying
    why and how far its log was read."""
    if not retired:
        return
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE instance_name = ANY(%s)").format(t(schema, "user_login_job_status")),
        [list(retired)],
    )
    record_history(
        conn,
        schema,
        run_id,
        [
            (
                "stopped_reading",
                instance,
                None,
                why,
                {
                    "instance": instance,
                    "last_processed": mark.last_processed.isoformat(),
                    "last_event": mark.last_event.isoformat() if mark.last_event else None,
                    "log_group": mark.location.log_group if mark.location else None,
                    "region_name": mark.location.region_name if mark.location else None,
                },
            )
            for instance, (mark, why) in retired.items()
        ],
    )


def record_retention_gaps(conn: psycopg.Connection, schema: str, gaps: Mapping[str, str]) -> None:
    """Keep the first unresolved gap of each instance until a run overrides it."""
    if gaps:
        conn.execute(
            sql.SQL(
                "UPDATE {} AS j SET retention_gap = coalesce(j.retention_gap, g.gap) "
                "FROM unnest(%s::text[], %s::text[]) AS g(instance, gap) WHERE j.instance_name = g.instance"
            ).format(t(schema, "user_login_job_status")),
            [list(gaps), list(gaps.values())],
        )


def clear_retention_gaps(conn: psycopg.Connection, schema: str, run_id: str) -> dict[str, str]:
    """A DBA's override: forget every recorded gap, with a history row per instance saying so."""
    rows = conn.execute(
        sql.SQL(
            "UPDATE {} AS j SET retention_gap = NULL FROM {} AS old "
            "WHERE j.instance_name = old.instance_name AND old.retention_gap IS NOT NULL "
            "RETURNING j.instance_name, old.retention_gap"
        ).format(t(schema, "user_login_job_status"), t(schema, "user_login_job_status"))
    ).fetchall()
    gaps = {r[0]: r[1] for r in rows}
    record_history(
        conn,
        schema,
        run_id,
        [
            (
                "override_retention",
                instance,
                None,
                "trigger conf override_retention: logins may have aged out of the log",
                {"instance": instance, "gap": gap},
            )
            for instance, gap in gaps.items()
        ],
    )
    return gaps


def save_watermarks(conn: psycopg.Connection, schema: str, marks: Iterable[Watermark]) -> None:
    """Advance (never rewind) each instance's watermark and last seen connection event; what the
    read saw of connection events replaces what the previous read saw."""
    marks = list(marks)
    if not marks:
        return
    # log_streams travel as JSON: a text[] per row does not fit in one unnest() array parameter
    conn.execute(
        sql.SQL(
            "INSERT INTO {0} AS j (instance_name, last_processed_time, last_event_time, "
            "connection_events, unrecognised_example, log_group, region_name, log_streams) "
            "SELECT i, p, e, c, u, g, r, "
            "CASE WHEN s IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(s)) END "
            "FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[], %s::bigint[], "
            "%s::text[], %s::text[], %s::text[], %s::jsonb[]) AS x(i, p, e, c, u, g, r, s) "
            "ON CONFLICT (instance_name) DO UPDATE SET "
            "last_processed_time = GREATEST(j.last_processed_time, EXCLUDED.last_processed_time), "
            "last_event_time = GREATEST(j.last_event_time, EXCLUDED.last_event_time), "
            "connection_events = EXCLUDED.connection_events, "
            "unrecognised_example = EXCLUDED.unrecognised_example, "
            "log_group = coalesce(EXCLUDED.log_group, j.log_group), "
            "region_name = CASE WHEN EXCLUDED.log_group IS NULL THEN j.region_name "
            "ELSE EXCLUDED.region_name END, "
            "log_streams = CASE WHEN EXCLUDED.log_group IS NULL THEN j.log_streams "
            "ELSE EXCLUDED.log_streams END, "
            "updated_at = now()"
        ).format(t(schema, "user_login_job_status")),
        [
            [m.instance for m in marks],
            [m.last_processed for m in marks],
            [m.last_event for m in marks],
            [m.connection_events for m in marks],
            [m.unrecognised_example for m in marks],
            [m.location.log_group if m.location else None for m in marks],
            [m.location.region_name if m.location else None for m in marks],
            [_streams_json(m.location) for m in marks],
        ],
    )


def _streams_json(location: LogLocation | None) -> Jsonb | None:
    if location is None or location.log_streams is None:
        return None
    return Jsonb(list(location.log_streams))


def record_history(
    conn: psycopg.Connection,
    schema: str,
    run_id: str,
    entries: Sequence[tuple[str, str, int | None, str, dict]],
) -> None:
    """Append (action, user_name, role_oid, reason, detail) rows in one statement.

    The entries travel as one JSON document of [action, user_name, role_oid, reason, detail]
    arrays: an array of ``jsonb`` parameters would be dumped element by element and parsed as an
    array literal, about four times slower for thousands of rows.
    """
    if not entries:
        return
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (run_id, action, user_name, role_oid, reason, detail) "
            "SELECT %s, e->>0, e->>1, (e->>2)::oid, e->>3, e->4 "
            "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS x(e, n) ORDER BY n"
        ).format(t(schema, "action_history")),
        [run_id, Jsonb([list(e) for e in entries])],
    )


def db_now(conn: psycopg.Connection) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]
