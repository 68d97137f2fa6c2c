"""What the status page shows of one cluster, read at request time from its state schema.

Read-only and bounded: one transaction marked ``READ ONLY`` with a ``statement_timeout``, through
the cluster's Airflow Postgres connection with a connect timeout, so an unreachable or slow
cluster answers with an error instead of holding an api-server worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from inactive_users.core.config import ClusterConfig
from inactive_users.core.policy import (
    LOCKED,
    READY_TO_DELETE,
    Exclusions,
    RoleInfo,
    days_until,
    due,
    exclusion_reason,
)
from inactive_users.postgres import migrations, state
from inactive_users.postgres.instances import Connect

#: Statuses of the rows the page adds for login roles the policy never manages.
EXCLUDED = "Excluded"
#: Milliseconds any one statement of the page may take on the cluster.
STATEMENT_TIMEOUT_MS = 5000
#: Rows of action_history on the page.
HISTORY_ROWS = 50

_NO_ACTION: dict[str, Any] = {"last_action": None, "last_action_at": None, "last_action_reason": None}


@dataclass(frozen=True)
class RoleRow:
    """One role as the page, the JSON and the CSV show it."""

    name: str
    status: str
    last_login: datetime | None
    days_inactive: int | None
    days_until_lock: int | None  # None: never (no threshold, locked already, or excluded)
    days_until_drop: int | None
    reason: str | None  # why the policy never acts on it (exclusion or protection), or None
    status_reason: str | None  # why it has its status (from the state table)
    blockers: str | None  # what blocks DROP ROLE, for ReadyToDelete
    last_action: str | None
    last_action_at: datetime | None
    last_action_reason: str | None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("last_login", "last_action_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


@dataclass(frozen=True)
class HistoryRow:
    at: datetime
    action: str
    user_name: str
    reason: str | None
    run_id: str | None
    actor: str


@dataclass(frozen=True)
class InstanceRow:
    """An instance whose log the job reads (a watermark), and how far it has read it."""

    instance: str
    log_group: str | None  # None: recorded before the job kept where each log is
    region_name: str | None
    last_read: datetime
    last_connection_event: datetime | None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("last_read", "last_connection_event"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


@dataclass
class ClusterStatus:
    cluster_id: str
    dag_id: str
    as_of: datetime
    lock_after_days: int | None
    delete_after_days: int | None
    roles: list[RoleRow] = field(default_factory=list)
    history: list[HistoryRow] = field(default_factory=list)
    instances: list[InstanceRow] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for r in self.roles:
            found[r.status] = found.get(r.status, 0) + 1
        return found


_ROWS_SQL = """
SELECT u.user_name, u.role_oid::bigint, u.last_login_time, u.status, u.status_reason,
       h.action, h.at, h.reason,
       CASE WHEN u.status = 'ReadyToDelete' THEN
           (SELECT b.detail->>'blockers' FROM {history} b
            WHERE b.user_name = u.user_name AND b.action = 'ready_to_delete'
            ORDER BY b.at DESC, b.id DESC LIMIT 1)
       END
FROM {status} u
LEFT JOIN LATERAL (
    SELECT x.action, x.at, x.reason FROM {history} x
    WHERE x.user_name = u.user_name ORDER BY x.at DESC, x.id DESC LIMIT 1
) h ON true
ORDER BY u.user_name
"""


@contextmanager
def read_only(connect: Connect) -> Iterator[psycopg.Connection]:
    """One ``READ ONLY`` transaction whose statements each end within ``STATEMENT_TIMEOUT_MS``."""
    with connect() as conn, conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(STATEMENT_TIMEOUT_MS)))
        yield conn


def why_unreadable(exc: BaseException) -> str:
    """Why a cluster's state could not be read, safe to show (no host, user or DSN)."""
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return f"it did not answer within {STATEMENT_TIMEOUT_MS / 1000:g} s"
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
        return "its state schema does not exist yet (run the cluster's DAG once)"
    return f"the connection failed ({type(exc).__name__})"


def read_status(cluster: ClusterConfig, connect: Connect) -> ClusterStatus:
    """Every tracked role with its dates and last action, the excluded login roles, recent history.

    Raises ``psycopg.Error`` (or the hook's error) when the cluster cannot be read; the caller
    turns it into a message without connection details.
    """
    settings = cluster.settings
    schema = settings.state_schema
    with read_only(connect) as conn:
        as_of = state.db_now(conn)
        session_user, _ = state.job_user(conn)
        roles = state.fetch_roles(conn, settings.exempt_groups)
        rows = conn.execute(
            sql.SQL(_ROWS_SQL).format(
                status=state.t(schema, "user_login_status"), history=state.t(schema, "action_history")
            )
        ).fetchall()
        history = conn.execute(
            sql.SQL(
                "SELECT at, action, user_name, reason, run_id, actor FROM {} ORDER BY id DESC LIMIT %s"
            ).format(state.t(schema, "action_history")),
            [HISTORY_ROWS],
        ).fetchall()
        # a schema the DAG has not migrated yet (the api-server upgraded first) has no locations
        marks = state.fetch_watermarks(conn, schema) if migrations.current_version(conn, schema) >= 6 else {}
    exclusions = settings.exclusions(protected=(cluster.master_user, session_user))
    thresholds = settings.thresholds()
    status = ClusterStatus(
        cluster.cluster_id,
        cluster.dag_id,
        as_of,
        settings.lock_after_days,
        settings.delete_after_days,
        history=[HistoryRow(*h) for h in history],
        instances=[
            InstanceRow(
                m.instance,
                m.location.log_group if m.location else None,
                m.location.region_name if m.location else None,
                m.last_processed,
                m.last_event,
            )
            for m in sorted(marks.values(), key=lambda m: m.instance)
        ],
    )
    tracked: set[int] = set()
    for name, oid, last, st, st_reason, action, action_at, action_reason, blockers in rows:
        if oid is not None:
            tracked.add(oid)
        role = roles.get(oid) if oid is not None else None
        reason = exclusion_reason(role, exclusions) if role is not None else None
        when = due(last, thresholds, locked=st in (LOCKED, READY_TO_DELETE))
        acts = reason is None
        status.roles.append(
            RoleRow(
                name=name,
                status=st,
                last_login=last,
                days_inactive=(as_of - last).days,
                days_until_lock=days_until(when.lock, as_of) if acts else None,
                days_until_drop=days_until(when.drop, as_of) if acts else None,
                reason=reason,
                status_reason=st_reason,
                blockers=blockers,
                last_action=action,
                last_action_at=action_at,
                last_action_reason=action_reason,
            )
        )
    status.roles.extend(_excluded(roles.values(), tracked, exclusions))
    status.roles.sort(key=lambda r: r.name)
    return status


def _excluded(roles: Iterable[RoleInfo], tracked: set[int], exclusions: Exclusions) -> list[RoleRow]:
    """Login roles the policy never manages (so never tracked), with the reason, for the auditor."""
    out = []
    for role in roles:
        if not role.can_login or role.oid in tracked:
            continue
        reason = exclusion_reason(role, exclusions)
        if reason is not None:
            blank = dict.fromkeys(
                ("last_login", "days_inactive", "days_until_lock", "days_until_drop", "status_reason")
            )
            out.append(RoleRow(role.name, EXCLUDED, **blank, reason=reason, blockers=None, **_NO_ACTION))
    return out
