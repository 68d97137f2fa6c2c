"""Lock, unlock and drop roles (the Postgres I/O shell for actions).

Each batch runs in one transaction holding the cluster's action lock; each role gets its own
savepoint so one failure (permission denied, a dependency appearing meanwhile) does not stop the
others. The role's attributes, its status row and its history row change in the same transaction,
so after a crash anywhere they agree, and a re-run reconciles against ``pg_roles``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from inactive_users.policy import ACTIVE, LOCKED, READY_TO_DELETE, Planned
from inactive_users.state import record_history, t, take_action_lock

DEPENDENT_OBJECTS_STILL_EXIST = "2BP01"


@dataclass
class Outcome:
    name: str
    action: str  # locked | dropped | ready_to_delete | unlocked | skipped | failed
    reason: str = ""
    last_login: str | None = None
    blockers: str | None = None


@dataclass
class ActionReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def by_action(self, action: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.action == action]

    @property
    def failures(self) -> list[Outcome]:
        return self.by_action("failed")

    def names(self, action: str) -> list[str]:
        return [o.name for o in self.by_action(action)]


@dataclass(frozen=True)
class _Facts:
    name: str
    oid: int | None
    status: str
    last_login: Any
    exists: bool
    can_login: bool | None
    conn_limit: int | None
    has_session: bool
    prior_can_login: bool | None
    prior_conn_limit: int | None
    lock_method: str | None


_FACTS_SQL = """
SELECT u.user_name, u.role_oid::bigint, u.status, u.last_login_time,
       r.oid IS NOT NULL AND r.rolname = u.user_name, r.rolcanlogin, r.rolconnlimit,
       EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.usesysid = u.role_oid AND a.pid <> pg_backend_pid()),
       u.prior_can_login, u.prior_conn_limit, u.lock_method
FROM {status} u LEFT JOIN pg_roles r ON r.oid = u.role_oid
WHERE u.user_name = ANY(%s::text[])
ORDER BY u.user_name
FOR UPDATE OF u
"""


def _facts(conn: psycopg.Connection, schema: str, names: Sequence[str]) -> dict[str, _Facts]:
    rows = conn.execute(
        sql.SQL(_FACTS_SQL).format(status=t(schema, "user_login_status")),
        [list(names)],
    ).fetchall()
    return {r[0]: _Facts(*r) for r in rows}


def _stale(item: Planned, f: _Facts | None) -> str | None:
    """Why the plan no longer holds for this role, if it does not."""
    if f is None or not f.exists or f.oid != item.oid:
        return "role dropped, renamed or re-created since the plan"
    if f.has_session:
        return "has a session open now"
    if f.last_login != item.last_login:
        return "logged in since the plan was made"
    return None


def _lock_sql(name: str, method: str) -> sql.Composed:
    clause = "NOLOGIN" if method == "nologin" else "CONNECTION LIMIT 0"
    return sql.SQL("ALTER ROLE {} " + clause).format(sql.Identifier(name))


def _mark_locked(
    conn: psycopg.Connection, schema: str, f: _Facts, status: str, method: str, reason: str
) -> None:
    conn.execute(
        sql.SQL(
            "UPDATE {} SET status = %s, status_reason = %s, locked_at = coalesce(locked_at, now()), "
            "lock_method = coalesce(lock_method, %s), prior_can_login = coalesce(prior_can_login, %s), "
            "prior_conn_limit = coalesce(prior_conn_limit, %s), updated_at = now() WHERE user_name = %s"
        ).format(t(schema, "user_login_status")),
        [status, reason, method, f.can_login, f.conn_limit, f.name],
    )


def lock_roles(
    conn: psycopg.Connection,
    schema: str,
    items: Sequence[Planned],
    method: str,
    run_id: str,
    lease_run_id: str | None = None,
) -> ActionReport:
    """Lock each planned role, recording what it had so unlock can restore it exactly."""
    report = ActionReport()
    history: list[tuple[str, str, int | None, str, dict]] = []
    with conn.transaction():
        take_action_lock(conn, schema, lease_run_id)
        facts = _facts(conn, schema, [i.name for i in items])
        for item in items:
            f = facts.get(item.name)
            last = item.last_login.isoformat(timespec="seconds")
            why_not = _stale(item, f) or (None if f and f.status == ACTIVE else "no longer Active")
            if why_not or f is None:
                report.outcomes.append(Outcome(item.name, "skipped", why_not or "", last))
                continue
            reason = f"inactive {item.inactive_days} days"
            why = f"{reason} (last login {last})"
            try:
                with conn.transaction():
                    conn.execute(_lock_sql(item.name, method))
                    _mark_locked(conn, schema, f, LOCKED, method, why)
            except psycopg.Error as exc:
                report.outcomes.append(Outcome(item.name, "failed", _error_text(exc), last))
                history.append(("lock_failed", item.name, item.oid, _error_text(exc), {}))
                continue
            report.outcomes.append(Outcome(item.name, "locked", reason, last))
            history.append(
                (
                    "lock",
                    item.name,
                    item.oid,
                    why,
                    {"method": method, "prior_can_login": f.can_login, "prior_conn_limit": f.conn_limit},
                )
            )
        record_history(conn, schema, run_id, history)
    return report


_DEPENDENCIES_SQL = """
SELECT d.refobjid::bigint,
       coalesce(db.datname::text, '(cluster-wide)'),
       d.deptype::text,
       d.classid::regclass::text,
       count(*)
FROM pg_shdepend d
LEFT JOIN pg_database db ON db.oid = d.dbid
WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = ANY(%s::oid[]) AND d.deptype <> 'p'
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
"""

_DEPTYPE = {
    "o": "owns",
    "a": "holds privileges on",
    "r": "is named in policies on",
    "i": "initial privileges on",
}


def dependency_summaries(conn: psycopg.Connection, oids: Sequence[int]) -> dict[int, str]:
    """What blocks ``DROP ROLE`` for each role, across every database of the cluster."""
    if not oids:
        return {}
    parts: dict[int, list[str]] = {}
    for oid, database, deptype, catalog, count in conn.execute(_DEPENDENCIES_SQL, [list(oids)]):
        what = _DEPTYPE.get(deptype, f"depends ({deptype}) on")
        noun = "object" if count == 1 else "objects"
        parts.setdefault(oid, []).append(f"{what} {count} {noun} ({catalog}) in database {database}")
    return {oid: "; ".join(p) for oid, p in parts.items()}


def delete_roles(
    conn: psycopg.Connection,
    schema: str,
    items: Sequence[Planned],
    method: str,
    run_id: str,
    lease_run_id: str | None = None,
) -> ActionReport:
    """Drop each planned role that nothing depends on; flag (and lock) the rest ReadyToDelete.

    Never ``REASSIGN OWNED`` / ``DROP OWNED``: deciding what happens to a user's objects is the DBA's.
    """
    report = ActionReport()
    history: list[tuple[str, str, int | None, str, dict]] = []
    status_table = t(schema, "user_login_status")
    with conn.transaction():
        take_action_lock(conn, schema, lease_run_id)
        facts = _facts(conn, schema, [i.name for i in items])
        blockers = dependency_summaries(conn, [i.oid for i in items])
        for item in items:
            f = facts.get(item.name)
            last = item.last_login.isoformat(timespec="seconds")
            why_not = _stale(item, f)
            if why_not or f is None:
                report.outcomes.append(Outcome(item.name, "skipped", why_not or "", last))
                continue
            reason = f"inactive {item.inactive_days} days"
            why = f"{reason} (last login {last})"
            blocked = blockers.get(item.oid)
            if blocked is None:
                try:
                    with conn.transaction():
                        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(item.name)))
                        conn.execute(
                            sql.SQL("DELETE FROM {} WHERE user_name = %s").format(status_table), [item.name]
                        )
                except psycopg.Error as exc:
                    if exc.sqlstate != DEPENDENT_OBJECTS_STILL_EXIST:
                        report.outcomes.append(Outcome(item.name, "failed", _error_text(exc), last))
                        history.append(("drop_failed", item.name, item.oid, _error_text(exc), {}))
                        continue
                    blocked = _error_text(exc)
                else:
                    report.outcomes.append(Outcome(item.name, "dropped", reason, last))
                    history.append(("drop", item.name, item.oid, why, {"status_before": f.status}))
                    continue
            outcome = _flag_ready_to_delete(conn, schema, f, method, reason, blocked)
            outcome.last_login = last
            report.outcomes.append(outcome)
            if outcome.action == "failed":
                history.append(("flag_failed", item.name, item.oid, outcome.reason, {}))
            elif outcome.action == "ready_to_delete":
                history.append(
                    (
                        "ready_to_delete",
                        item.name,
                        item.oid,
                        why,
                        {"blockers": blocked, "status_before": f.status, "lock_method": method},
                    )
                )
        record_history(conn, schema, run_id, history)
    return report


def _flag_ready_to_delete(
    conn: psycopg.Connection, schema: str, f: _Facts, method: str, reason: str, blockers: str
) -> Outcome:
    """Lock the role if it is not locked yet, and mark it ReadyToDelete with what blocks the drop."""
    if f.status == READY_TO_DELETE:
        return Outcome(f.name, "still_ready_to_delete", reason, blockers=blockers)
    try:
        with conn.transaction():
            if f.status != LOCKED:
                conn.execute(_lock_sql(f.name, method))
            _mark_locked(
                conn,
                schema,
                f,
                READY_TO_DELETE,
                method,
                f"{reason} (last login {f.last_login}); blocked by: {blockers}",
            )
    except psycopg.Error as exc:
        return Outcome(f.name, "failed", _error_text(exc), blockers=blockers)
    return Outcome(f.name, "ready_to_delete", reason, blockers=blockers)


def unlock_roles(
    conn: psycopg.Connection,
    schema: str,
    names: Sequence[str],
    run_id: str,
    lease_run_id: str | None = None,
) -> ActionReport:
    """Restore exactly the attributes recorded at lock time and restart the role's clock."""
    report = ActionReport()
    history: list[tuple[str, str, int | None, str, dict]] = []
    with conn.transaction():
        take_action_lock(conn, schema, lease_run_id)
        facts = _facts(conn, schema, names)
        for name in names:
            f = facts.get(name)
            if f is None:
                report.outcomes.append(
                    Outcome(name, "failed", "not tracked by inactive_users (no status row)")
                )
                continue
            if f.status not in (LOCKED, READY_TO_DELETE):
                report.outcomes.append(Outcome(name, "skipped", f"status is {f.status}, nothing to unlock"))
                continue
            if not f.exists:
                report.outcomes.append(Outcome(name, "failed", "role no longer exists"))
                continue
            can_login = True if f.prior_can_login is None else f.prior_can_login
            limit = -1 if f.prior_conn_limit is None else f.prior_conn_limit
            restore = sql.SQL("ALTER ROLE {} WITH {} CONNECTION LIMIT {}").format(
                sql.Identifier(name), sql.SQL("LOGIN" if can_login else "NOLOGIN"), sql.Literal(limit)
            )
            try:
                with conn.transaction():
                    conn.execute(restore)
                    conn.execute(
                        sql.SQL(
                            "UPDATE {} SET status = 'Active', last_login_time = now(), status_reason = %s, "
                            "locked_at = NULL, lock_method = NULL, prior_can_login = NULL, "
                            "prior_conn_limit = NULL, updated_at = now() WHERE user_name = %s"
                        ).format(t(schema, "user_login_status")),
                        [f"unlocked by run {run_id}", name],
                    )
            except psycopg.Error as exc:
                report.outcomes.append(Outcome(name, "failed", _error_text(exc)))
                history.append(("unlock_failed", name, f.oid, _error_text(exc), {}))
                continue
            detail = {
                "restored_can_login": can_login,
                "restored_conn_limit": limit,
                "status_before": f.status,
            }
            report.outcomes.append(Outcome(name, "unlocked", "restored recorded attributes"))
            history.append(("unlock", name, f.oid, "unlock requested", detail))
        record_history(conn, schema, run_id, history)
    return report


def _error_text(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).splitlines()[0]
    if diag.message_detail:
        text += f" ({diag.message_detail.replace(chr(10), '; ')})"
    return f"{exc.sqlstate}: {text}" if exc.sqlstate else text
