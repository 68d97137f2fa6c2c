"""Lock, unlock and drop roles (the Postgres I/O shell for actions).

Each batch runs in one transaction holding the cluster's action lock; each role gets its own
savepoint so one failure (permission denied, a dependency appearing meanwhile) does not stop the
others. The role's attributes, its status row and its history row change in the same transaction,
so after a crash anywhere they agree, and a re-run reconciles against ``pg_roles``.

A batch costs a handful of round trips whatever its size: the per-role statements (``ALTER ROLE``,
``DROP ROLE``) run server-side in one ``DO`` block that gives each its own subtransaction (a
PL/pgSQL exception block, which is a savepoint), and the status and history rows are written by
one set-based statement each. So ``statement_timeout`` bounds the whole batch (a timeout or a
cancel rolls the batch back and fails the step, as a lost connection does), and
``log_statement = ddl`` no longer shows each ``ALTER ROLE`` / ``DROP ROLE`` (``pgaudit`` does);
``action_history`` records each one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from inactive_users.core.policy import ACTIVE, LOCKED, READY_TO_DELETE, Planned
from inactive_users.postgres.blockers import ConnectDatabase
from inactive_users.postgres.blockers import blockers as name_blockers
from inactive_users.postgres.state import record_history, t, take_action_lock

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


# Runs each statement of the batch in its own subtransaction and keeps going after a failure. The
# statements come in, and the failures go out, through a transaction-local setting, so the block
# itself is constant text and no role name is ever spliced into it.
_BATCH_SETTING = "inactive_users.batch"
_EACH_SQL = """DO $inactive_users$
DECLARE
    todo text[] := ARRAY(
        SELECT s FROM jsonb_array_elements_text(current_setting('inactive_users.batch')::jsonb)
                      WITH ORDINALITY AS a(s, n)
        ORDER BY n);
    failed int[] := '{}';
    codes text[] := '{}';
    messages text[] := '{}';
    details text[] := '{}';
    code text;
    message text;
    detail text;
BEGIN
    FOR i IN 1 .. coalesce(array_length(todo, 1), 0) LOOP
        BEGIN
            EXECUTE todo[i];
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                                    detail = PG_EXCEPTION_DETAIL;
            failed := failed || i;
            codes := codes || code;
            messages := messages || message;
            details := details || detail;
        END;
    END LOOP;
    PERFORM set_config('inactive_users.batch',
                       json_build_array(failed, codes, messages, details)::text, true);
END
$inactive_users$
"""


def _each(conn: psycopg.Connection, statements: Sequence[sql.Composable]) -> dict[int, tuple[str, str]]:
    """Run each statement in its own savepoint, in three round trips for the whole batch.

    Inside the caller's transaction. Returns ``{index: (sqlstate, error text)}`` for the statements
    that failed; their effects are undone, the others' stand.
    """
    if not statements:
        return {}
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
        raise RuntimeError("a batch runs inside the caller's transaction (its setting is local to it)")
    texts = [s.as_string(conn) for s in statements]
    conn.execute("SELECT set_config(%s, %s, true)", [_BATCH_SETTING, json.dumps(texts)])
    conn.execute(_EACH_SQL)
    row = conn.execute("SELECT current_setting(%s)", [_BATCH_SETTING]).fetchone()
    assert row is not None
    failed, codes, messages, details = json.loads(row[0])
    return {
        i - 1: (code, _error_text(code, message, detail))
        for i, code, message, detail in zip(failed, codes, messages, details, strict=True)
    }


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
    conn: psycopg.Connection,
    schema: str,
    marks: Sequence[tuple[_Facts, str]],
    status: str,
    method: str,
) -> None:
    """Set each (role, reason) to ``status``, keeping the lock time, method and prior attributes it has.

    A row already in ``status`` with that reason is left as it is (a re-check changes nothing).
    """
    if not marks:
        return
    conn.execute(
        sql.SQL(
            "UPDATE {} u SET status = %s, status_reason = c.reason, "
            "locked_at = coalesce(u.locked_at, now()), lock_method = coalesce(u.lock_method, %s), "
            "prior_can_login = coalesce(u.prior_can_login, c.can_login), "
            "prior_conn_limit = coalesce(u.prior_conn_limit, c.conn_limit), updated_at = now() "
            "FROM unnest(%s::text[], %s::text[], %s::bool[], %s::int[]) "
            "AS c(name, reason, can_login, conn_limit) "
            "WHERE u.user_name = c.name "
            "AND (u.status IS DISTINCT FROM %s OR u.status_reason IS DISTINCT FROM c.reason)"
        ).format(t(schema, "user_login_status")),
        [
            status,
            method,
            [f.name for f, _ in marks],
            [reason for _, reason in marks],
            [f.can_login for f, _ in marks],
            [f.conn_limit for f, _ in marks],
            status,
        ],
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
        todo: list[tuple[Planned, _Facts]] = []
        skipped: dict[str, str] = {}
        for item in items:
            f = facts.get(item.name)
            why_not = _stale(item, f) or (None if f and f.status == ACTIVE else "no longer Active")
            if why_not or f is None:
                skipped[item.name] = why_not or ""
            else:
                todo.append((item, f))
        errors = _each(conn, [_lock_sql(item.name, method) for item, _ in todo])
        done = {item.name: f for n, (item, f) in enumerate(todo) if n not in errors}
        failed = {item.name: errors[n][1] for n, (item, _) in enumerate(todo) if n in errors}
        _mark_locked(conn, schema, [(f, _why(item)) for item, f in todo if item.name in done], LOCKED, method)
        for item in items:
            last = _last(item)
            if item.name in skipped:
                report.outcomes.append(Outcome(item.name, "skipped", skipped[item.name], last))
            elif item.name in failed:
                report.outcomes.append(Outcome(item.name, "failed", failed[item.name], last))
                history.append(("lock_failed", item.name, item.oid, failed[item.name], {}))
            else:
                f = done[item.name]
                report.outcomes.append(Outcome(item.name, "locked", _reason(item), last))
                history.append(
                    (
                        "lock",
                        item.name,
                        item.oid,
                        _why(item),
                        {"method": method, "prior_can_login": f.can_login, "prior_conn_limit": f.conn_limit},
                    )
                )
        record_history(conn, schema, run_id, history)
    return report


def _last(item: Planned) -> str:
    return item.last_login.isoformat(timespec="seconds")


def _reason(item: Planned) -> str:
    return f"inactive {item.inactive_days} days"


def _why(item: Planned) -> str:
    return f"{_reason(item)} (last login {_last(item)})"


def delete_roles(
    conn: psycopg.Connection,
    schema: str,
    items: Sequence[Planned],
    method: str,
    run_id: str,
    lease_run_id: str | None = None,
    connect_database: ConnectDatabase | None = None,
    may_drop: bool = True,
) -> ActionReport:
    """Drop each planned role that nothing depends on; flag (and lock) the rest ReadyToDelete.

    ``may_drop`` false (the drops were not approved): flag only; a role nothing depends on is left
    as it is, and the next run asks again.

    What blocks a role is named per database (``blockers``; ``connect_database`` reaches the other
    databases of the cluster); a role already ReadyToDelete gets its reason brought up to date.
    Never ``REASSIGN OWNED`` / ``DROP OWNED``: deciding what happens to a user's objects is the DBA's.
    """
    report = ActionReport()
    history: list[tuple[str, str, int | None, str, dict]] = []
    with conn.transaction():
        take_action_lock(conn, schema, lease_run_id)
        facts = _facts(conn, schema, [i.name for i in items])
        blockers = name_blockers(conn, [i.oid for i in items], connect_database)
        skipped: dict[str, str] = {}
        to_drop: list[tuple[Planned, _Facts]] = []
        to_flag: list[tuple[Planned, _Facts, str]] = []
        for item in items:
            f = facts.get(item.name)
            why_not = _stale(item, f)
            if why_not or f is None:
                skipped[item.name] = why_not or ""
            elif item.oid in blockers:
                to_flag.append((item, f, blockers[item.oid]))
            elif not may_drop:
                skipped[item.name] = "not dropped: no approval covers this drop (the next run asks again)"
            else:
                to_drop.append((item, f))

        errors = _each(conn, [sql.SQL("DROP ROLE {}").format(sql.Identifier(i.name)) for i, _ in to_drop])
        failed: dict[str, str] = {}
        dropped: list[str] = []
        for n, (item, f) in enumerate(to_drop):
            if n not in errors:
                dropped.append(item.name)
            elif errors[n][0] == DEPENDENT_OBJECTS_STILL_EXIST:  # a dependency appeared meanwhile
                to_flag.append((item, f, errors[n][1]))
            else:
                failed[item.name] = errors[n][1]
        if dropped:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE user_name = ANY(%s::text[])").format(
                    t(schema, "user_login_status")
                ),
                [dropped],
            )

        # Flag: lock the role if it is not locked yet, and mark it ReadyToDelete with what blocks the drop.
        blocked = {item.name: b for item, _, b in to_flag}
        flag = [(item, f) for item, f, _ in to_flag if f.status != READY_TO_DELETE]
        must_lock = [(item, f) for item, f in flag if f.status != LOCKED]
        errors = _each(conn, [_lock_sql(item.name, method) for item, _ in must_lock])
        flag_failed = {must_lock[n][0].name: text for n, (_, text) in errors.items()}
        flagged = [(item, f) for item, f in flag if item.name not in flag_failed]
        flagged += [(item, f) for item, f, _ in to_flag if f.status == READY_TO_DELETE]  # reason refreshed
        _mark_locked(
            conn,
            schema,
            [
                (f, f"{_reason(item)} (last login {f.last_login}); blocked by: {blocked[item.name]}")
                for item, f in flagged
            ],
            READY_TO_DELETE,
            method,
        )

        dropped_set = set(dropped)
        for item in items:
            name, last, reason = item.name, _last(item), _reason(item)
            if name in skipped:
                report.outcomes.append(Outcome(name, "skipped", skipped[name], last))
            elif name in failed:
                report.outcomes.append(Outcome(name, "failed", failed[name], last))
                history.append(("drop_failed", name, item.oid, failed[name], {}))
            elif name in dropped_set:
                report.outcomes.append(Outcome(name, "dropped", reason, last))
                # the status row goes with the role: its last login stays in the history (evidence)
                detail = {"status_before": facts[name].status, "last_login": last}
                history.append(("drop", name, item.oid, _why(item), detail))
            elif name in flag_failed:
                report.outcomes.append(Outcome(name, "failed", flag_failed[name], last, blocked[name]))
                history.append(("flag_failed", name, item.oid, flag_failed[name], {}))
            elif facts[name].status == READY_TO_DELETE:
                report.outcomes.append(Outcome(name, "still_ready_to_delete", reason, last, blocked[name]))
            else:
                report.outcomes.append(Outcome(name, "ready_to_delete", reason, last, blocked[name]))
                history.append(
                    (
                        "ready_to_delete",
                        name,
                        item.oid,
                        _why(item),
                        {
                            "blockers": blocked[name],
                            "status_before": facts[name].status,
                            "lock_method": method,
                        },
                    )
                )
        record_history(conn, schema, run_id, history)
    return report


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
        refused: dict[str, Outcome] = {}
        todo: list[tuple[_Facts, bool, int]] = []
        for name in names:
            f = facts.get(name)
            if f is None:
                refused[name] = Outcome(name, "failed", "not tracked by inactive_users (no status row)")
            elif f.status not in (LOCKED, READY_TO_DELETE):
                refused[name] = Outcome(name, "skipped", f"status is {f.status}, nothing to unlock")
            elif not f.exists:
                refused[name] = Outcome(name, "failed", "role no longer exists")
            else:
                can_login = True if f.prior_can_login is None else f.prior_can_login
                limit = -1 if f.prior_conn_limit is None else f.prior_conn_limit
                todo.append((f, can_login, limit))
        errors = _each(
            conn,
            [
                sql.SQL("ALTER ROLE {} WITH {} CONNECTION LIMIT {}").format(
                    sql.Identifier(f.name), sql.SQL("LOGIN" if can_login else "NOLOGIN"), sql.Literal(limit)
                )
                for f, can_login, limit in todo
            ],
        )
        restored = {
            f.name: (f, can_login, limit) for n, (f, can_login, limit) in enumerate(todo) if n not in errors
        }
        failed = {todo[n][0].name: text for n, (_, text) in errors.items()}
        if restored:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET status = 'Active', last_login_time = now(), status_reason = %s, "
                    "locked_at = NULL, lock_method = NULL, prior_can_login = NULL, "
                    "prior_conn_limit = NULL, updated_at = now() WHERE user_name = ANY(%s::text[])"
                ).format(t(schema, "user_login_status")),
                [f"unlocked by run {run_id}", list(restored)],
            )
        for name in names:
            if name in refused:
                report.outcomes.append(refused[name])
            elif name in failed:
                report.outcomes.append(Outcome(name, "failed", failed[name]))
                history.append(("unlock_failed", name, facts[name].oid, failed[name], {}))
            else:
                f, can_login, limit = restored[name]
                detail = {
                    "restored_can_login": can_login,
                    "restored_conn_limit": limit,
                    "status_before": f.status,
                }
                report.outcomes.append(Outcome(name, "unlocked", "restored recorded attributes"))
                history.append(("unlock", name, f.oid, "unlock requested", detail))
        record_history(conn, schema, run_id, history)
    return report


def _error_text(sqlstate: str | None, message: str, detail: str | None) -> str:
    text = message
    if detail:
        text += f" ({detail.replace(chr(10), '; ')})"
    return f"{sqlstate}: {text}" if sqlstate else text
