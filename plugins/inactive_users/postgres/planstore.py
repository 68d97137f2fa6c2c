"""The plan of a DAG run, kept in the state schema so the action tasks can read all of it back.

The ``plan`` task and the ``lock_users`` / ``delete_users`` tasks run in separate processes. The
roles a run plans to act on can number tens of thousands, too many for XCom (Airflow's metadata
database), so ``plan`` writes them here keyed by the run id, and the action tasks act on exactly
this set (intersected with a fresh plan at action time). XCom carries only counts and a sample.

The table holds one run's plan: recording a plan replaces whatever an earlier run left. An earlier
run whose plan is gone cannot act on it any more (it also lost the run lease, which ``plan`` holds).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from inactive_users.core.policy import Plan
from inactive_users.postgres.state import t

LOCK = "lock"
DELETE = "delete"
ACTIONS = (LOCK, DELETE)


def record(conn: psycopg.Connection, schema: str, run_id: str, plan: Plan) -> dict[str, int]:
    """Inside the caller's transaction: make ``run_id``'s plan the recorded one.

    Two statements whatever the plan's size; returns the number of roles recorded per action.
    """
    conn.execute(sql.SQL("DELETE FROM {}").format(t(schema, "planned_action")))
    rows = [(LOCK, p) for p in plan.lock] + [(DELETE, p) for p in plan.delete]
    if rows:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (run_id, action, user_name, role_oid) "
                "SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::oid[])"
            ).format(t(schema, "planned_action")),
            [run_id, [a for a, _ in rows], [p.name for _, p in rows], [p.oid for _, p in rows]],
        )
    return {LOCK: len(plan.lock), DELETE: len(plan.delete)}


def fetch(conn: psycopg.Connection, schema: str, run_id: str, action: str) -> set[tuple[str, int]]:
    """The (role name, role OID) pairs ``run_id`` planned for ``action``, in one round trip."""
    if action not in ACTIONS:
        raise ValueError(f"unknown planned action {action!r}")
    rows = conn.execute(
        sql.SQL("SELECT user_name, role_oid::bigint FROM {} WHERE run_id = %s AND action = %s").format(
            t(schema, "planned_action")
        ),
        [run_id, action],
    ).fetchall()
    return {(r[0], r[1]) for r in rows}
