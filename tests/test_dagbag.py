"""Parsing the DAG file as Airflow does: one DAG per cluster, fixed tasks, bad entries as import errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from airflow.sdk import TriggerRule

from inactive_users.dag_factory import TASK_IDS

DAGS = Path(__file__).resolve().parents[1] / "dags"

EDGES = {
    "preflight": {"sync_roles"},
    "sync_roles": {"ingest_logins"},
    "ingest_logins": {"plan"},
    "plan": {"choose_actions"},
    "choose_actions": {"lock_users", "delete_users", "nothing_to_do"},
    "lock_users": {"delete_users", "alert"},
    "delete_users": {"alert"},
    "nothing_to_do": {"alert"},
    "alert": {"report"},
    "report": set(),
}


def bag_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, doc: dict) -> object:
    from airflow.dag_processing.dagbag import DagBag

    path = tmp_path / "inactive_users.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    monkeypatch.setenv("INACTIVE_USERS_CONFIG", str(path))
    return DagBag(dag_folder=str(DAGS))


def test_every_cluster_yields_a_dag_with_the_fixed_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = {
        "defaults": {"schedule": "@hourly"},
        "clusters": [
            {"cluster_id": "orders-prod", "postgres_conn_id": "orders_pg"},
            {"cluster_id": "billing", "postgres_conn_id": "billing_pg", "schedule": "0 3 * * *"},
        ],
    }
    bag = bag_for(tmp_path, monkeypatch, doc)
    assert bag.import_errors == {}  # type: ignore[attr-defined]
    assert sorted(bag.dag_ids) == ["inactive_users__billing", "inactive_users__orders_prod"]  # type: ignore[attr-defined]
    for dag in bag.dags.values():  # type: ignore[attr-defined]
        assert {t.task_id for t in dag.tasks} == set(TASK_IDS)
        assert {t.task_id: set(t.downstream_task_ids) for t in dag.tasks} == EDGES
        assert dag.max_active_runs == 1 and dag.catchup is False
        assert set(dag.params) == {
            "dry_run",
            "lock_after_days",
            "delete_after_days",
            "exclude_users",
            "unlock_users",
            "as_of",
        }
        rules = {t.task_id: TriggerRule(t.trigger_rule).value for t in dag.tasks}
        assert rules["report"] == "all_done"
        assert rules["alert"] == rules["delete_users"] == "none_failed_min_one_success"
        assert dag.task_dict["preflight"].retries == 2
        assert dag.task_dict["preflight"].on_failure_callback
    assert bag.dags["inactive_users__billing"].timetable.expression == "0 3 * * *"  # type: ignore[attr-defined]


def test_a_bad_entry_is_an_import_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {
        "clusters": [
            {"cluster_id": "orders-prod", "postgres_conn_id": "orders_pg"},
            {"cluster_id": "broken-one", "postgres_conn_id": "b", "delete_after_days": 30},
            {"cluster_id": "billing", "postgres_conn_id": "billing_pg"},
        ]
    }
    bag = bag_for(tmp_path, monkeypatch, doc)
    assert sorted(bag.dag_ids) == ["inactive_users__billing", "inactive_users__orders_prod"]  # type: ignore[attr-defined]
    [error] = bag.import_errors.values()  # type: ignore[attr-defined]
    assert "clusters[2] ('broken-one')" in error
    assert "delete_after_days (30) must be greater than lock_after_days (90)" in error


def test_parsing_makes_no_database_or_aws_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections point at a listener of ours; after parsing 20 clusters nobody has connected to it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_BLACKHOLE_PG", f"postgres://u:p@127.0.0.1:{port}/db")
    monkeypatch.setenv(
        "AIRFLOW_CONN_BLACKHOLE_AWS",
        f'{{"conn_type": "aws", "extra": {{"endpoint_url": "http://127.0.0.1:{port}"}}}}',
    )
    clusters = [
        {"cluster_id": f"c{i}", "postgres_conn_id": "blackhole_pg", "aws_conn_id": "blackhole_aws"}
        for i in range(20)
    ]
    bag = bag_for(tmp_path, monkeypatch, {"clusters": clusters})
    assert len(bag.dag_ids) == 20 and bag.import_errors == {}  # type: ignore[attr-defined]
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()  # no connection is waiting: parsing never dialled the database or AWS
    listener.close()


def test_a_worker_parses_only_the_dag_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inactive_users.dag_factory import build_dags

    path = tmp_path / "c.yaml"
    clusters = [{"cluster_id": f"c{i}", "postgres_conn_id": "pg"} for i in range(5)]
    path.write_text(yaml.safe_dump({"clusters": clusters}), encoding="utf-8")
    assert len(build_dags(path)) == 5
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "inactive_users__c3")
    assert list(build_dags(path)) == ["inactive_users__c3"]
