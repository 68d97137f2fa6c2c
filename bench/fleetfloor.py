"""The floor of the fleet benchmark: DAGs with the cluster DAG's task graph whose tasks do nothing.

What Airflow itself costs to run that shape (``bench_fleet_runs.py`` runs it beside ours).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def floor_dags(n: int) -> dict[str, Any]:
    """n DAGs shaped like a cluster DAG without approvals: the same tasks, edges and trigger rules."""
    from airflow.sdk import DAG, TriggerRule, task

    dags = {}
    for i in range(n):
        with DAG(f"floor_{i:03d}", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:

            @task
            def noop() -> None:
                return None

            @task.branch
            def choose() -> list[str]:
                return ["nothing_to_do"]

            steps = [noop.override(task_id=t)() for t in ("preflight", "sync_roles", "ingest_logins", "plan")]
            branch = choose.override(task_id="choose_actions")()
            lock = noop.override(task_id="lock_users")()
            delete = noop.override(
                task_id="delete_users", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS
            )()
            idle = noop.override(task_id="nothing_to_do")()
            alert = noop.override(task_id="alert", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)()
            evidence = noop.override(task_id="write_evidence", trigger_rule=TriggerRule.ALL_DONE)()
            report = noop.override(task_id="report", trigger_rule=TriggerRule.ALL_DONE)()
            steps[0] >> steps[1] >> steps[2] >> steps[3] >> branch
            branch >> [lock, delete, idle]
            lock >> delete
            [lock, delete, idle] >> alert
            [lock, delete, idle] >> evidence
            [alert, evidence] >> report
        dags[dag.dag_id] = dag
    return dags
