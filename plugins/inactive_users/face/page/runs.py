"""What Airflow knows of each cluster's runs: the latest run, and drops waiting for a DBA.

Read in the api-server, where the page runs, through Airflow's own models and session: the same
columns the REST API's ``/dagRuns`` and ``/taskInstances`` answer with, read only, one statement
each for the whole fleet. Access is checked before (the caller passes only readable DAG ids).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from inactive_users.face.compat import HITL_WAIT_STATE
from inactive_users.face.page.urls import base_path
from inactive_users.face.steps import APPROVAL_TASK_ID  # it waits in HITL_WAIT_STATE, its run too


@dataclass(frozen=True)
class LastRun:
    run_id: str
    state: str
    run_after: datetime | None
    end_date: datetime | None

    def url(self, dag_id: str) -> str:
        return run_url(dag_id, self.run_id)


def run_url(dag_id: str, run_id: str) -> str:
    """The run in Airflow's UI."""
    return f"{base_path()}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def approval_url(dag_id: str, run_id: str) -> str:
    """The run's approval question on the UI's Required Actions page."""
    return f"{run_url(dag_id, run_id)}/tasks/{APPROVAL_TASK_ID}/required_actions"


def latest_runs(dag_ids: Collection[str]) -> dict[str, LastRun]:
    """The latest run of each DAG (by when it was due to run), if it has one."""
    if not dag_ids:
        return {}
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    ranked = (
        select(
            DagRun.dag_id,
            DagRun.run_id,
            DagRun.state,
            DagRun.run_after,
            DagRun.end_date,
            func.row_number()
            .over(partition_by=DagRun.dag_id, order_by=(DagRun.run_after.desc(), DagRun.id.desc()))
            .label("n"),
        )
        .where(DagRun.dag_id.in_(list(dag_ids)))
        .subquery()
    )
    query = select(ranked.c.dag_id, ranked.c.run_id, ranked.c.state, ranked.c.run_after, ranked.c.end_date)
    with create_session() as session:
        rows = session.execute(query.where(ranked.c.n == 1)).all()
    return {r.dag_id: LastRun(r.run_id, str(r.state), r.run_after, r.end_date) for r in rows}


def awaiting_approval(dag_ids: Collection[str]) -> dict[str, list[str]]:
    """The runs of each DAG whose drops wait for a DBA's answer."""
    if not dag_ids:
        return {}
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = select(TaskInstance.dag_id, TaskInstance.run_id).where(
        TaskInstance.dag_id.in_(list(dag_ids)),
        TaskInstance.task_id == APPROVAL_TASK_ID,
        TaskInstance.state == HITL_WAIT_STATE,
    )
    found: dict[str, list[str]] = {}
    with create_session() as session:
        for dag_id, run_id in session.execute(query).all():
            found.setdefault(dag_id, []).append(run_id)
    return found
