"""Parsing the DAG file as Airflow does: one DAG per cluster, fixed tasks, bad entries as import errors."""

from __future__ import annotations

import copy
import gc
import inspect
import socket
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from airflow.sdk import DAG, Param, TriggerRule, task
from airflow.sdk.definitions.param import ParamsDict

from inactive_users.config import ClusterConfig, load
from inactive_users.dag_factory import TASK_IDS, build_dag, build_dags, check_defaults, params_for

DAGS = Path(__file__).resolve().parents[1] / "dags"

EDGES = {
    "preflight": {"sync_roles"},
    "sync_roles": {"ingest_logins"},
    "ingest_logins": {"plan"},
    "plan": {"choose_actions"},
    "choose_actions": {"lock_users", "delete_users", "nothing_to_do"},
    "lock_users": {"delete_users", "alert", "write_evidence"},
    "delete_users": {"alert", "write_evidence"},
    "nothing_to_do": {"alert", "write_evidence"},
    "alert": {"report"},
    "write_evidence": {"report"},
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
            "override_retention",
        }
        rules = {t.task_id: TriggerRule(t.trigger_rule).value for t in dag.tasks}
        assert rules["report"] == rules["write_evidence"] == "all_done"
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
    path = tmp_path / "c.yaml"
    clusters = [{"cluster_id": f"c{i}", "postgres_conn_id": "pg"} for i in range(5)]
    path.write_text(yaml.safe_dump({"clusters": clusters}), encoding="utf-8")
    assert len(build_dags(path)) == 5
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "inactive_users__c3")
    assert list(build_dags(path)) == ["inactive_users__c3"]


def cluster_from(tmp_path: Path, **entry: object) -> ClusterConfig:
    path = tmp_path / "one.yaml"
    doc = {"clusters": [{"cluster_id": "orders-prod", "postgres_conn_id": "pg", **entry}]}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    [cluster] = load(path).clusters
    return cluster


def described(params: ParamsDict) -> list[tuple[str, object, object, object, object]]:
    return [(k, p.value, p.description, p.schema, p.source) for k, p in params.items()]


def test_params_are_what_airflow_builds_from_dag_params(tmp_path: Path) -> None:
    """attach_params leaves the DAG and its tasks as building the DAG with params= would."""
    cluster = cluster_from(tmp_path, exclude_users=["app"], dry_run=True, lock_after_days=30)
    with DAG(
        "reference", schedule="@daily", start_date=datetime(2024, 1, 1), params=params_for(cluster)
    ) as ref:

        @task
        def probe() -> None: ...

        probe()
    dag = build_dag(cluster)
    assert described(dag.params) == described(ref.params)
    [ref_task] = ref.tasks
    for t in dag.tasks:
        assert described(t.params) == described(ref_task.params)
    # every task has Param objects of its own, as with Airflow's deep copies
    params = [dag.params.get_param(k) for k in dag.params]
    params += [t.params.get_param(k) for t in dag.tasks for k in t.params]
    assert len({id(p) for p in params}) == len(params) == (1 + len(TASK_IDS)) * 7
    assert len({id(p.value) for p in params if isinstance(p.value, list)}) == (1 + len(TASK_IDS)) * 2


def test_a_bad_param_default_fails_as_airflow_fails_it() -> None:
    bad = {"days": Param(0, type="integer", minimum=1), "ok": Param("x", type="string")}
    with pytest.raises(ValueError) as airflow_error:
        DAG("d", schedule="@daily", start_date=datetime(2024, 1, 1), params=copy.deepcopy(bad))
    with pytest.raises(ValueError) as ours:
        check_defaults("d", ParamsDict(bad))
    assert str(ours.value) == str(airflow_error.value)
    assert str(ours.value.__cause__) == str(airflow_error.value.__cause__)
    check_defaults("d", ParamsDict({"days": Param(1, type="integer", minimum=1)}))  # valid: no error


def test_what_is_stated_for_airflow_is_what_it_would_work_out(tmp_path: Path) -> None:
    """multiple_outputs as inferred from the return annotation; each attached signature as inspected."""
    for t in build_dag(cluster_from(tmp_path)).tasks:
        fn = t.python_callable  # type: ignore[attr-defined]
        assert t.multiple_outputs == task(fn).multiple_outputs, t.task_id
        attached = fn.__dict__.pop("__signature__")
        assert attached == inspect.signature(fn), t.task_id


def test_building_leaves_the_garbage_collector_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"clusters": [{"cluster_id": "c", "postgres_conn_id": "pg"}]}))
    assert gc.isenabled()
    build_dags(path)
    assert gc.isenabled()
    gc.disable()
    try:
        build_dags(path)
        assert not gc.isenabled()
    finally:
        gc.enable()
