"""Parsing the DAG file as Airflow does: one DAG per cluster, fixed tasks, bad entries as import errors."""

from __future__ import annotations

import gc
import inspect
import socket
from pathlib import Path

import pytest
import yaml
from airflow.sdk import TriggerRule, task

from inactive_users.core.config import ClusterConfig, load
from inactive_users.face.dag_factory import TASK_IDS, build_dag, build_dags, params_for

pytestmark = pytest.mark.compat

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
    from inactive_users.face.compat import DagBag

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
    assert bag.dags["inactive_users__billing"].schedule == "0 3 * * *"  # type: ignore[attr-defined]


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


def test_the_trigger_form_is_the_dags_params_and_the_tasks_get_them_at_run_time(tmp_path: Path) -> None:
    from airflow.sdk.definitions.param import process_params

    from inactive_users.face.compat import DagSerialization

    cluster = cluster_from(tmp_path, exclude_users=["app"], dry_run=True, lock_after_days=30)
    dag = build_dag(cluster)
    form = [(k, p.value, p.description, p.schema) for k, p in params_for(cluster).items()]
    assert [(k, p.value, p.description, p.schema) for k, p in dag.params.items()] == form
    assert dag.params["dry_run"] is True and dag.params["exclude_users"] == ["app"]
    assert len({id(dag.params.get_param(k)) for k in dag.params}) == 7  # new objects, this DAG's own
    # the tasks hold no copy (serializing the copies was 90% of a DAG's serialization) ...
    assert all(not t.params for t in dag.tasks)
    serialized = DagSerialization.to_dict(dag)["dag"]
    assert [k for k, _ in serialized["params"]] == [k for k, *_ in form]  # the UI's trigger form
    assert not [t for t in serialized["tasks"] if "params" in t["__var"]]
    # ... and each task sees the DAG's, with the run's conf over them, as Airflow resolves them
    task = dag.get_task("plan")
    seen = process_params(dag, task, {"dry_run": False, "unlock_users": ["bob"]}, suppress_exception=False)
    assert seen == {
        "dry_run": False,
        "lock_after_days": 30,
        "delete_after_days": 180,
        "exclude_users": ["app"],
        "unlock_users": ["bob"],
        "as_of": None,
        "override_retention": False,
    }


def test_a_bad_param_default_is_refused_by_the_config_naming_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow would refuse it too ("not allowed to define a Schedule"), naming only the DAG."""
    doc = {
        "clusters": [
            {"cluster_id": "orders-prod", "postgres_conn_id": "pg", "lock_after_days": 0},
            {"cluster_id": "billing", "postgres_conn_id": "pg", "exclude_users": ["app", 7]},
            {"cluster_id": "crm", "postgres_conn_id": "pg"},
        ]
    }
    bag = bag_for(tmp_path, monkeypatch, doc)
    assert bag.dag_ids == ["inactive_users__crm"]  # type: ignore[attr-defined]
    [error] = bag.import_errors.values()  # type: ignore[attr-defined]
    assert "clusters[1] ('orders-prod'): lock_after_days must be a whole number of days >= 1" in error
    assert "clusters[2] ('billing'): exclude_users must be a list of strings" in error
    assert "not allowed to define a Schedule" not in error


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


def split_fleet(folder: Path, parts: dict[str, list[str]]) -> None:
    """One DAG file per YAML, as the README shows for a fleet split across files."""
    for name, cluster_ids in parts.items():
        config_path = folder / f"{name}.yaml"
        clusters = [{"cluster_id": c, "postgres_conn_id": "pg"} for c in cluster_ids]
        config_path.write_text(yaml.safe_dump({"clusters": clusters}), encoding="utf-8")
        (folder / f"inactive_users_{name}.py").write_text(
            "# Airflow DAG file: the inactive_users DAGs of one part of the fleet\n"
            "from inactive_users.face.dag_factory import build_dags\n\n"
            f"globals().update(build_dags({str(config_path)!r}))\n",
            encoding="utf-8",
        )


def test_a_fleet_split_across_dag_files_loads_every_part(tmp_path: Path) -> None:
    from inactive_users.face.compat import DagBag

    split_fleet(tmp_path, {"east": ["orders-prod", "billing"], "west": ["crm"]})
    bag = DagBag(dag_folder=str(tmp_path))
    assert bag.import_errors == {}
    files = {d: Path(bag.dags[d].fileloc).name for d in bag.dag_ids}
    assert files == {
        "inactive_users__orders_prod": "inactive_users_east.py",
        "inactive_users__billing": "inactive_users_east.py",
        "inactive_users__crm": "inactive_users_west.py",
    }


def test_a_cluster_in_two_parts_of_the_fleet_is_reported_naming_both_files(tmp_path: Path) -> None:
    """Seen when one process parses the whole folder (``airflow dags list-import-errors --local``)."""
    from inactive_users.face.compat import DagBag

    split_fleet(tmp_path, {"east": ["orders-prod", "billing"], "west": ["crm", "billing"]})
    bag = DagBag(dag_folder=str(tmp_path))
    assert sorted(bag.dag_ids) == [
        "inactive_users__billing",
        "inactive_users__crm",
        "inactive_users__orders_prod",
    ]
    [(path, error)] = bag.import_errors.items()
    assert Path(path).name == "inactive_users_west.py"
    assert "Ignoring DAG inactive_users__billing from" in error
    assert f"also found in {tmp_path / 'inactive_users_east.py'}" in error
    assert Path(bag.dags["inactive_users__billing"].fileloc).name == "inactive_users_east.py"
