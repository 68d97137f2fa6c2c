"""Two more places a standby's logins hide: an RDS Multi-AZ DB cluster (a writer and two readable
standbys, one log group with a stream per instance, like Aurora) and a self-managed primary and
standby whose CloudWatch agents ship their logs to two log groups. Each standby is a real hot
standby (``pg_basebackup -R``); a role that logs in only on a standby is never locked.

They run on the newest PostgreSQL only: tests/test_rds.py runs the same replica-only login on
every version, and what differs here is where the topology and the logs are, not the server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from devstack.pgcluster import PgCluster, running_standby
from tests.dagrun import DagHarness
from tests.scenario import ROLE_PASSWORD, Scenario
from tests.test_rds import endpoint, log_in, seed

pytestmark = pytest.mark.single_pg_version(
    "the topology and the log groups are the subject; test_rds.py covers every version's standby"
)

MAZ = "test-maz"
MAZ_INSTANCES = [f"{MAZ}-instance-{i}" for i in (1, 2, 3)]  # the writer first


def test_a_multi_az_db_cluster_reads_every_member(
    scenario: Scenario,
    pg_standby: PgCluster,
    tmp_path: Path,
    airflow_db: None,
    task_log: Callable[[], str],
) -> None:
    sc, reader = scenario, pg_standby
    h = DagHarness(sc, tmp_path)
    h.rds.create_db_cluster(
        DBClusterIdentifier=MAZ,
        Engine="postgres",
        MasterUsername="mazmaster",
        MasterUserPassword="not-used-by-the-job",
        DBClusterInstanceClass="db.m6gd.large",
        AllocatedStorage=100,
        StorageType="io1",
        Iops=1000,
        EnableCloudwatchLogsExports=["postgresql"],
    )
    for instance in MAZ_INSTANCES:
        h.rds.create_db_instance(
            DBInstanceIdentifier=instance,
            DBInstanceClass="db.m6gd.large",
            Engine="postgres",
            DBClusterIdentifier=MAZ,
        )
    with running_standby(sc.pg) as second_reader:
        seed(sc, [reader, second_reader], {"only_on_reader": 120, "pooled_on_reader": 120, "idle": 120})
        servers = dict(zip(MAZ_INSTANCES, (sc.pg, reader, second_reader), strict=True))
        # a Multi-AZ DB cluster is never part of a Global Database: nothing to ask (null)
        h.write_config(
            cluster_id=MAZ,
            global_secondaries=None,
            instance_endpoints={i: endpoint(s) for i, s in servers.items()},
        )
        pooled = psycopg.connect(
            second_reader.dsn(user="pooled_on_reader", password=ROLE_PASSWORD), autocommit=True
        )
        try:
            for standby in (reader, second_reader):
                sc.skip_log(standby)
            log_in(reader, "only_on_reader")
            with psycopg.connect(second_reader.dsn()):  # the other reader's own connection events
                pass
            assert sc.login("postgres", password=sc.pg.password)
            for instance, server in servers.items():
                assert sc.ship(instance, server=server, cluster_id=MAZ) > 0
            states = h.run(dag_id="inactive_users__test_maz")
            assert states["report"] == "success", states
        finally:
            pooled.close()
    st = sc.statuses()
    assert (st["only_on_reader"]["status"], st["pooled_on_reader"]["status"], st["idle"]["status"]) == (
        "Active",
        "Active",
        "Locked",
    )
    assert sc.role("only_on_reader")["can_login"] is True  # type: ignore[index]
    marks = {r[0] for r in sc.sql("SELECT instance_name FROM inactive_users.user_login_job_status")}
    assert marks == set(MAZ_INSTANCES)
    text = task_log()
    assert f"Multi-AZ DB cluster {MAZ}: instances {MAZ_INSTANCES}" in text
    assert "mazmaster" in text  # the cluster's master user is excluded


def test_a_self_managed_standby_shipped_to_its_own_log_group(
    scenario: Scenario, pg_standby: PgCluster, tmp_path: Path, airflow_db: None
) -> None:
    sc, standby = scenario, pg_standby
    h = DagHarness(sc, tmp_path)
    seed(sc, [standby], {"only_on_standby": 120, "idle": 120})
    # the CloudWatch agent on each host ships to a group of its own; on the standby, one named stream
    h.write_config(
        cluster_id="test-selfmanaged",
        instances=[
            {"name": "pg-primary", "log_group": "/postgres/pg-primary"},
            {"name": "pg-standby", "log_group": "/postgres/pg-standby", "log_stream": "postgresql.log"},
        ],
        master_user="postgres",
        instance_endpoints={"pg-primary": endpoint(sc.pg), "pg-standby": endpoint(standby)},
        global_secondaries=None,
    )
    sc.skip_log(standby)
    log_in(standby, "only_on_standby")
    assert sc.ship("postgresql.log", server=standby, log_group="/postgres/pg-standby") > 0
    # another stream in the standby's group (a second agent's) is not the one named: not read
    sc.logs.create_log_stream(logGroupName="/postgres/pg-standby", logStreamName="i-0123456789abcdef0")
    assert sc.login("postgres", password=sc.pg.password)
    assert sc.ship("i-0fedcba9876543210", log_group="/postgres/pg-primary") > 0

    states = h.run(dag_id="inactive_users__test_selfmanaged")
    assert states["report"] == "success", states
    st = sc.statuses()
    assert (st["only_on_standby"]["status"], st["idle"]["status"]) == ("Active", "Locked")
    assert sc.role("only_on_standby")["can_login"] is True  # type: ignore[index]
    marks = {
        r[0]: r[1:]
        for r in sc.sql(
            "SELECT instance_name, log_group, log_streams FROM inactive_users.user_login_job_status"
        )
    }
    assert marks == {
        "pg-primary": ("/postgres/pg-primary", None),
        "pg-standby": ("/postgres/pg-standby", ["postgresql.log"]),
    }


def test_a_standby_added_later_is_read_back_as_far_as_a_login_counts_or_refused(
    scenario: Scenario, tmp_path: Path, airflow_db: None, task_log: Callable[[], str]
) -> None:
    sc = scenario
    h = DagHarness(sc, tmp_path)
    seed(sc, [], {"idle": 10})
    here = endpoint(sc.pg)
    primary = {"name": "pg-primary", "log_group": "/postgres/pg-primary"}
    h.write_config(
        cluster_id="test-selfmanaged", instances=[primary], instance_endpoints={"pg-primary": here}
    )
    assert sc.login("postgres", password=sc.pg.password)
    assert sc.ship("pg-primary", log_group="/postgres/pg-primary") > 0
    assert h.run(dag_id="inactive_users__test_selfmanaged")["report"] == "success"

    # a standby the config did not list until now; its group keeps 7 days, less than the 180 days
    # back a login still counts, and nothing says when the standby was made
    standby = {"name": "pg-standby", "log_group": "/postgres/pg-standby"}
    h.write_config(
        cluster_id="test-selfmanaged",
        instances=[primary, standby],
        instance_endpoints={"pg-primary": here, "pg-standby": here},
    )
    for name in ("pg-primary", "pg-standby"):
        assert sc.login("postgres", password=sc.pg.password)
        assert sc.ship(name, log_group=f"/postgres/{name}") > 0
    sc.logs.put_retention_policy(logGroupName="/postgres/pg-standby", retentionInDays=7)
    sc.set_last_login("idle", 120)
    states = h.run(dag_id="inactive_users__test_selfmanaged")
    assert states["ingest_logins"] == "success" and states["plan"] == "failed", states
    assert sc.role("idle")["can_login"] is True  # type: ignore[index]
    text = task_log()
    assert (
        "retention guard: pg-standby: read for the first time, but log group /postgres/pg-standby keeps "
        "events for 7 days"
    ) in text

    states = h.run({"override_retention": True}, dag_id="inactive_users__test_selfmanaged")
    assert states["report"] == "success", states
    assert sc.statuses()["idle"]["status"] == "Locked"


def test_a_standby_the_config_leaves_out_refuses_lock_and_drop(
    scenario: Scenario,
    pg_standby: PgCluster,
    tmp_path: Path,
    airflow_db: None,
    task_log: Callable[[], str],
) -> None:
    """The wrong action this guard stops: an RDS primary configured the way the README's manual path
    once described (instances, log_group, master_user), with a read replica the config does not
    name; a role that logs in every day, but only on the replica, was locked."""
    sc, replica = scenario, pg_standby
    h = DagHarness(sc, tmp_path)
    seed(sc, [replica], {"daily_on_replica": 120, "idle": 120})
    manual = {
        "cluster_id": "test-rds-manual",
        "instances": ["test-rds"],
        "log_group": "/aws/rds/instance/test-rds/postgresql",
        "master_user": "clustermaster",
        "instance_endpoints": {"test-rds": endpoint(sc.pg)},
        "global_secondaries": None,
    }
    h.write_config(**manual)
    sc.skip_log(replica)
    log_in(replica, "daily_on_replica")
    sc.ship("test-rds-replica", server=replica, log_group="/aws/rds/instance/test-rds-replica/postgresql")
    assert sc.login("postgres", password=sc.pg.password)
    assert sc.ship("test-rds", log_group="/aws/rds/instance/test-rds/postgresql") > 0

    states = h.run(dag_id="inactive_users__test_rds_manual")
    assert states["ingest_logins"] == "success" and states["plan"] == "failed", states
    assert sc.role("daily_on_replica")["can_login"] is True  # type: ignore[index]
    assert sc.role("idle")["can_login"] is True  # type: ignore[index]
    text = task_log()
    assert (
        "standby guard: test-rds sends its WAL to 1 ('walreceiver'): 1 physical standby(s) in all, but "
        "the job reads 1 instance(s)"
    ) in text

    # the standby listed with where its log is: its logins count, and the run acts
    manual["instances"] = [
        "test-rds",
        {"name": "test-rds-replica", "log_group": "/aws/rds/instance/test-rds-replica/postgresql"},
    ]
    manual["instance_endpoints"] = {"test-rds": endpoint(sc.pg), "test-rds-replica": endpoint(replica)}
    h.write_config(**manual)
    states = h.run(dag_id="inactive_users__test_rds_manual")
    assert states["report"] == "success", states
    st = sc.statuses()
    assert (st["daily_on_replica"]["status"], st["idle"]["status"]) == ("Active", "Locked")
