"""The ingest task runs in the Airflow pool the config names (``ingest_pool``), as Airflow parses it.

A pool shared by the clusters of one AWS account and region bounds how many of them read that
account's CloudWatch Logs quota at once; without one, the task is in Airflow's default pool.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from inactive_users.core.config import load
from inactive_users.face.dag_factory import build_dag

DAGS = Path(__file__).resolve().parents[1] / "dags"


def test_the_ingest_task_runs_in_the_configured_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inactive_users.face.compat import DagBag

    doc = {
        "defaults": {"ingest_pool": "cloudwatch_us_east_1"},
        "clusters": [
            {"cluster_id": "orders", "postgres_conn_id": "pg"},
            {"cluster_id": "billing", "postgres_conn_id": "pg", "ingest_pool": "cloudwatch_eu_west_1"},
            {"cluster_id": "own", "postgres_conn_id": "pg", "ingest_pool": None},
        ],
    }
    path = tmp_path / "inactive_users.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    monkeypatch.setenv("INACTIVE_USERS_CONFIG", str(path))
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    pools = {dag_id: {t.task_id: t.pool for t in dag.tasks} for dag_id, dag in bag.dags.items()}
    assert pools["inactive_users__orders"]["ingest_logins"] == "cloudwatch_us_east_1"
    assert pools["inactive_users__billing"]["ingest_logins"] == "cloudwatch_eu_west_1"
    assert pools["inactive_users__own"]["ingest_logins"] == "default_pool"
    for tasks in pools.values():  # only the ingest task is in the pool
        assert {p for task_id, p in tasks.items() if task_id != "ingest_logins"} == {"default_pool"}

    [cluster] = [c for c in load(path).clusters if c.cluster_id == "billing"]
    assert build_dag(cluster).task_dict["ingest_logins"].pool == "cloudwatch_eu_west_1"
