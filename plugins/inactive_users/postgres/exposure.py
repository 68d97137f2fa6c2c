"""Each run's outcome, and the exposure the state table shows (the Postgres I/O shell).

Both are a fixed number of set-based statements whatever the number of roles or runs: the fleet
page reads them for every cluster at once, and the failure alert of a run that could not even
ingest reads them too.
"""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg import sql

from inactive_users.core.exposure import ACTED, NOT_ACTED, PROTECTED, RoleExposure, RunRecord
from inactive_users.core.policy import ACTIVE, READY_TO_DELETE, STATUSES
from inactive_users.postgres.state import t

#: A reason longer than this is cut: it is for a person to read, the task log has all of it.
REASON_LIMIT = 4000

_RECORD_SQL = """
INSERT INTO {t} AS o (run_id, outcome, task_id, reason) VALUES (%(run)s, %(outcome)s, %(task)s, %(reason)s)
ON CONFLICT (run_id) DO UPDATE
SET outcome = EXCLUDED.outcome, task_id = EXCLUDED.task_id, reason = EXCLUDED.reason, recorded_at = now()
WHERE o.outcome <> %(acted)s OR EXCLUDED.outcome = %(acted)s
"""

# One pass over the tracked roles: each one's due dates, whether it can log in (pg_roles), then
# the counts. ``upcoming`` follows policy.upcoming: an Active role's next threshold is the lock
# until it is reached, then the drop; a locked role's is the drop; ReadyToDelete is past both.
_ROLES_SQL = """
SELECT now(),
       {counts},
       count(*) FILTER (WHERE d.lock_due <= now() AND d.can_login),
       min(d.lock_due) FILTER (WHERE d.lock_due <= now() AND d.can_login),
       count(*) FILTER (WHERE d.drop_due <= now() AND d.live AND u.status <> %(rtd)s),
       min(d.drop_due) FILTER (WHERE d.drop_due <= now() AND d.live AND u.status <> %(rtd)s),
       count(*) FILTER (WHERE d.live AND u.status <> %(rtd)s AND d.next_due > now()
                        AND d.next_due <= now() + make_interval(days => %(warn)s))
FROM {status} u
LEFT JOIN pg_roles r ON r.oid = u.role_oid
CROSS JOIN LATERAL (
    SELECT u.last_login_time + make_interval(days => %(lock)s) AS lock_due,
           u.last_login_time + make_interval(days => %(drop)s) AS drop_due,
           r.oid IS NOT NULL AND r.rolname = u.user_name AS live,
           coalesce(r.rolcanlogin AND r.rolconnlimit <> 0 AND r.rolname = u.user_name, false) AS can_login
) d0
CROSS JOIN LATERAL (
    SELECT d0.*,
           CASE WHEN u.status = %(active)s AND d0.lock_due > now() THEN d0.lock_due ELSE d0.drop_due END
               AS next_due
) d
"""

_RUNS_SQL = """
WITH o AS (SELECT * FROM {t} WHERE run_id IS DISTINCT FROM %(exclude)s),
last_ok AS (SELECT max(recorded_at) AS at FROM o WHERE outcome = ANY(%(protected)s)),
since AS (
    SELECT o.* FROM o, last_ok
    WHERE o.outcome = ANY(%(not_acted)s) AND (last_ok.at IS NULL OR o.recorded_at > last_ok.at)
)
SELECT (SELECT at FROM last_ok), (SELECT count(*) FROM since), (SELECT min(recorded_at) FROM since),
       r.recorded_at, r.outcome, r.run_id, r.reason
FROM (SELECT 1) one
LEFT JOIN LATERAL (
    SELECT recorded_at, outcome, run_id, reason FROM o
    WHERE outcome = ANY(%(not_acted)s) ORDER BY recorded_at DESC LIMIT 1
) r ON true
"""


def record_outcome(
    conn: psycopg.Connection, schema: str, run_id: str, outcome: str, task_id: str | None, reason: str | None
) -> None:
    """Record (or update) what run ``run_id`` did; a run that acted stays recorded as having acted."""
    conn.execute(
        sql.SQL(_RECORD_SQL).format(t=t(schema, "run_outcome")),
        {
            "run": run_id,
            "outcome": outcome,
            "task": task_id,
            "reason": reason[:REASON_LIMIT] if reason else None,
            "acted": ACTED,
        },
    )


def read_roles(
    conn: psycopg.Connection,
    schema: str,
    lock_after_days: int | None,
    delete_after_days: int | None,
    warn_before_days: int | None,
) -> RoleExposure:
    """Roles past each threshold that keep their access (and since when), upcoming ones, counts."""
    counts = sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE u.status = {})").format(sql.Literal(s)) for s in STATUSES
    )
    row = conn.execute(
        sql.SQL(_ROLES_SQL).format(counts=counts, status=t(schema, "user_login_status")),
        {
            "lock": lock_after_days,
            "drop": delete_after_days,
            "warn": warn_before_days,
            "rtd": READY_TO_DELETE,
            "active": ACTIVE,
        },
    ).fetchone()
    assert row is not None
    as_of, by_status, rest = row[0], row[1 : 1 + len(STATUSES)], row[1 + len(STATUSES) :]
    past_lock, lock_since, past_drop, drop_since, upcoming = rest
    return RoleExposure(
        as_of=as_of,
        lock_after_days=lock_after_days,
        delete_after_days=delete_after_days,
        past_lock=past_lock,
        past_lock_since=lock_since,
        past_drop=past_drop,
        past_drop_since=drop_since,
        upcoming=upcoming,
        counts=tuple(zip(STATUSES, by_status, strict=True)),
    )


def read_runs(conn: psycopg.Connection, schema: str, exclude_run_id: str | None = None) -> RunRecord:
    """The runs' record, leaving out ``exclude_run_id`` (a run asking how things stood before it)."""
    table = t(schema, "run_outcome")
    present = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table.as_string(conn)]).fetchone()
    if not present or not present[0]:
        return RunRecord(recorded=False)
    row = conn.execute(
        sql.SQL(_RUNS_SQL).format(t=table),
        {"exclude": exclude_run_id, "protected": list(PROTECTED), "not_acted": list(NOT_ACTED)},
    ).fetchone()
    assert row is not None
    last_ok, not_acted, first, at, outcome, run_id, reason = row
    refusal: tuple[datetime, str, str | None, str | None] | None = (
        (at, outcome, run_id, reason) if at is not None else None
    )
    return RunRecord(last_ok, int(not_acted), first, refusal)
