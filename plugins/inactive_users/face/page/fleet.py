"""The fleet page's data: one row per cluster, every state schema read at once, worst exposure first.

Each cluster is read in its own thread with the cluster page's bounds (connect timeout, statement
timeout, read only). The page waits for all of them at most ``DEADLINE_S``: a cluster that has not
answered by then is a row that says so, and its thread ends by itself within the same bounds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from inactive_users.core.alerts import scrub
from inactive_users.core.config import ClusterConfig
from inactive_users.core.exposure import Report, RoleExposure, RunRecord
from inactive_users.core.kinds import engine_kind
from inactive_users.face.page import queries
from inactive_users.face.page.runs import LastRun, approval_url
from inactive_users.face.page.urls import URL_PREFIX, base_path
from inactive_users.postgres import exposure, planstore
from inactive_users.postgres.instances import CONNECT_TIMEOUT, bounded_connector

log = logging.getLogger("inactive_users.face.page")

#: Clusters read at once. Each read mostly waits on its server, so threads are cheap; a fleet
#: larger than this waits in turn, within the deadline.
MAX_CONCURRENCY = 64
#: The longest the page waits for the slowest cluster: its connect and statement timeouts.
DEADLINE_S = CONNECT_TIMEOUT + queries.STATEMENT_TIMEOUT_MS / 1000

#: The CSV's columns, in order (the JSON has the same keys, and links).
CSV_COLUMNS = (
    "cluster_id",
    "kind",
    "dag_id",
    "unreachable",
    "last_run_state",
    "last_run_at",
    "last_run_id",
    "active",
    "locked",
    "ready_to_delete",
    "past_lock_can_log_in",
    "past_lock_since",
    "past_drop_not_dropped",
    "past_drop_since",
    "upcoming",
    "awaiting_approval",
    "days_since_acted",
    "runs_not_acted",
    "escalated",
    "last_refusal_at",
    "last_refusal",
    "as_of",
)


@dataclass(frozen=True)
class ClusterState:
    """What one cluster's state schema says."""

    roles: RoleExposure
    runs: RunRecord
    awaiting_roles: int  # roles recorded for the drops of the runs waiting for approval


@dataclass(frozen=True)
class FleetRow:
    cluster: ClusterConfig
    kind: str
    state: ClusterState | None  # None: not readable, ``error`` says why
    error: str | None
    last_run: LastRun | None
    awaiting_runs: tuple[str, ...] = ()

    @property
    def cluster_id(self) -> str:
        return self.cluster.cluster_id

    @property
    def page_url(self) -> str:
        return f"{base_path()}{URL_PREFIX}/clusters/{self.cluster_id}"

    @property
    def approval_url(self) -> str | None:
        return approval_url(self.cluster.dag_id, self.awaiting_runs[0]) if self.awaiting_runs else None

    @property
    def escalated(self) -> bool:
        """No run has acted for longer than ``max_unprotected_days`` (as the failure alerts say)."""
        s = self.state
        return s is not None and Report(s.roles, s.runs).escalated(self.cluster.max_unprotected_days)

    @property
    def exposed(self) -> int:
        return self.state.roles.total if self.state else 0

    def values(self) -> dict[str, Any]:
        """The row as the CSV and the JSON give it (dates as datetimes, None for unknown)."""
        s, run = self.state, self.last_run
        roles, runs = (s.roles, s.runs) if s else (None, None)
        counts = dict(roles.counts) if roles else {}
        refusal = runs.last_refusal if runs else None
        days = runs.days_since_protected(roles.as_of) if runs and roles else None
        return {
            "cluster_id": self.cluster_id,
            "kind": self.kind,
            "dag_id": self.cluster.dag_id,
            "unreachable": self.error,
            "last_run_state": run.state if run else None,
            "last_run_at": (run.end_date or run.run_after) if run else None,
            "last_run_id": run.run_id if run else None,
            "active": counts.get("Active"),
            "locked": counts.get("Locked"),
            "ready_to_delete": counts.get("ReadyToDelete"),
            "past_lock_can_log_in": roles.past_lock if roles else None,
            "past_lock_since": roles.past_lock_since if roles else None,
            "past_drop_not_dropped": roles.past_drop if roles else None,
            "past_drop_since": roles.past_drop_since if roles else None,
            "upcoming": roles.upcoming if roles else None,
            "awaiting_approval": s.awaiting_roles if s else None,
            "days_since_acted": None if days is None else round(days, 1),
            "runs_not_acted": runs.not_acted if runs and runs.recorded else None,
            "escalated": self.escalated,
            "last_refusal_at": refusal[0] if refusal else None,
            "last_refusal": refusal[3] if refusal else None,
            "as_of": roles.as_of if roles else None,
        }

    def as_json(self) -> dict[str, Any]:
        out = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in self.values().items()}
        out["links"] = {
            "cluster_page": self.page_url,
            "last_run": self.last_run.url(self.cluster.dag_id) if self.last_run else None,
            "required_actions": self.approval_url,
        }
        return out


def worst_first(row: FleetRow) -> tuple[int, int, float, str]:
    """Clusters whose exposure is unknown, then the most roles exposed, the longest exposed first."""
    if row.state is None:
        return (0, 0, 0.0, row.cluster_id)
    r = row.state.roles
    since = [d for d in (r.past_lock_since, r.past_drop_since) if d is not None]
    return (1, -r.total, min(since).timestamp() if since else float("inf"), row.cluster_id)


def read_state(cluster: ClusterConfig, awaiting_runs: Sequence[str]) -> ClusterState:
    """One cluster's exposure, run record and drops awaiting approval, in one bounded transaction."""
    s, schema = cluster.settings, cluster.settings.state_schema
    with queries.read_only(bounded_connector(cluster.postgres_conn_id)) as conn:
        roles = exposure.read_roles(conn, schema, s.lock_after_days, s.delete_after_days, s.warn_before_days)
        runs = exposure.read_runs(conn, schema)
        awaiting = sum(len(planstore.fetch(conn, schema, run_id, "delete")) for run_id in awaiting_runs)
    return ClusterState(roles, runs, awaiting)


def _read(cluster: ClusterConfig, awaiting_runs: Sequence[str]) -> ClusterState | str:
    try:
        return read_state(cluster, awaiting_runs)
    except Exception as exc:  # psycopg errors, a missing Airflow connection, the IAM token call
        log.warning("fleet page: cluster %s could not be read: %s", cluster.cluster_id, scrub(str(exc)))
        return queries.why_unreadable(exc)


def read_fleet(
    clusters: Sequence[ClusterConfig],
    last_runs: Mapping[str, LastRun],
    awaiting: Mapping[str, Sequence[str]],
    deadline_s: float = DEADLINE_S,
) -> list[FleetRow]:
    """Every cluster's row, read concurrently, worst exposure first; none waited for past the deadline."""
    if not clusters:
        return []
    pool = ThreadPoolExecutor(min(MAX_CONCURRENCY, len(clusters)), thread_name_prefix="iu-fleet")
    try:
        futures: dict[Future[ClusterState | str], ClusterConfig] = {
            pool.submit(_read, c, awaiting.get(c.dag_id, ())): c for c in clusters
        }
        wait(futures, timeout=deadline_s)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # the late ones end within their own timeouts
    rows = []
    for future, c in futures.items():
        if future.done() and not future.cancelled():
            got = future.result()
        else:
            got = f"it did not answer within {deadline_s:g} s"
            log.warning("fleet page: cluster %s did not answer within %g s", c.cluster_id, deadline_s)
        state, error = (got, None) if isinstance(got, ClusterState) else (None, got)
        rows.append(
            FleetRow(
                c,
                engine_kind(c),
                state,
                error,
                last_runs.get(c.dag_id),
                tuple(awaiting.get(c.dag_id, ())),
            )
        )
    return sorted(rows, key=worst_first)
