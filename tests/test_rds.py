"""RDS for PostgreSQL as the target: a primary DB instance and every instance that replicates from
it, each a real hot standby (``pg_basebackup -R``) with its own log group in its own region.

The job is configured with ``db_instance_id`` only: it finds the replicas with DescribeDBInstances
(moto), a same-region one, a replica of that replica (cascading) and a cross-region one (by ARN in
eu-west-1), and reads each instance's log in ``/aws/rds/instance/<id>/postgresql`` of its region,
every stream of it: the streams here are not named after the instances. The DAG runs end to end
with ``dag.test()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devstack.awsfixtures import create_read_replica
from devstack.motoserver import boto_client
from devstack.pgcluster import PgCluster, free_port, running_standby
from devstack.shipper import instance_group_name
from inactive_users.core.config import load
from inactive_users.face.page import queries
from inactive_users.postgres.instances import bounded_connector
from tests.dagrun import DagHarness
from tests.scenario import ROLE_PASSWORD, Scenario

PRIMARY = "test-rds"
R1 = "test-rds-r1"  # a read replica in the primary's region
R2 = "test-rds-r1-r1"  # a replica of R1 (cascading)
EU = "test-rds-eu"  # a cross-region replica of the primary
EU_REGION = "eu-west-1"
HOME = "us-east-1"


def endpoint(server: PgCluster) -> str:
    return f"127.0.0.1:{server.port}"


def ship(sc: Scenario, instance: str, server: PgCluster | None = None, region: str = HOME) -> int:
    """The server's new log lines to the instance's own group, in a stream not named after it."""
    return sc.ship(
        f"{instance}.postgresql.log", server=server, region=region, log_group=instance_group_name(instance)
    )


def log_in(server: PgCluster, user: str) -> None:
    with psycopg.connect(server.dsn(user=user, password=ROLE_PASSWORD), connect_timeout=5):
        pass


def seed(sc: Scenario, standbys: list[PgCluster], days: dict[str, float]) -> None:
    """Roles an earlier run tracked, last seen ``days`` ago, visible on every standby."""
    for name in days:
        sc.create_role(name)
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    for name, ago in days.items():
        sc.set_last_login(name, ago)
    for standby in standbys:
        standby.wait_caught_up()


def watermarks(sc: Scenario) -> dict[str, tuple[Any, ...]]:
    rows = sc.sql(
        "SELECT instance_name, last_event_time, log_group, region_name, log_streams "
        "FROM inactive_users.user_login_job_status"
    )
    return {r[0]: r[1:] for r in rows}


@contextlib.contextmanager
def standbys_of(*sources: PgCluster) -> Iterator[list[PgCluster]]:
    """One hot standby of each source (a standby of a standby cascades), removed on exit."""
    with contextlib.ExitStack() as stack:
        made: list[PgCluster] = []
        for source in sources:
            made.append(stack.enter_context(running_standby(source)))
        yield made


def test_logins_and_sessions_on_any_replica_keep_roles_active(
    scenario: Scenario,
    pg_standby: PgCluster,
    tmp_path: Path,
    airflow_db: None,
    task_log: Callable[[], str],
) -> None:
    sc, r1 = scenario, pg_standby
    h = DagHarness(sc, tmp_path, db_instance=PRIMARY)
    primary_arn = h.rds.describe_db_instances(DBInstanceIdentifier=PRIMARY)["DBInstances"][0]["DBInstanceArn"]
    create_read_replica(h.rds, R1, PRIMARY, exports=["postgresql"])
    create_read_replica(h.rds, R2, R1, exports=["postgresql"])
    eu_rds = boto_client(sc.moto.endpoint_url, "rds", EU_REGION)
    create_read_replica(eu_rds, EU, primary_arn, exports=["postgresql"])
    with standbys_of(r1, sc.pg) as (r2, eu):
        # without the replicas' logs, each of these would be locked, and only_on_eu dropped
        seed(
            sc,
            [r1, r2, eu],
            {"only_on_r1": 120, "only_on_r2": 120, "only_on_eu": 200, "pooled_on_eu": 120, "idle": 120},
        )
        h.write_config(
            instance_endpoints={
                PRIMARY: endpoint(sc.pg),
                R1: endpoint(r1),
                R2: endpoint(r2),
                EU: endpoint(eu),
            }
        )
        # a pool's connection opened long ago on the cross-region replica: its login is in no log read
        pooled = psycopg.connect(eu.dsn(user="pooled_on_eu", password=ROLE_PASSWORD), autocommit=True)
        try:
            for standby in (r1, r2, eu):
                sc.skip_log(standby)
            log_in(r1, "only_on_r1")
            log_in(r2, "only_on_r2")
            log_in(eu, "only_on_eu")
            assert ship(sc, R1, r1) > 0 and ship(sc, R2, r2) > 0 and ship(sc, EU, eu, EU_REGION) > 0
            assert sc.login("postgres", password=sc.pg.password)
            assert ship(sc, PRIMARY) > 0
            on_primary = sc.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'pooled_on_eu'")
            assert on_primary == [(0,)]  # invisible on the primary, as on RDS

            states = h.run()
            assert states["report"] == "success", states
        finally:
            pooled.close()
    st = sc.statuses()
    assert {n: st[n]["status"] for n in ("only_on_r1", "only_on_r2", "only_on_eu", "pooled_on_eu")} == {
        "only_on_r1": "Active",
        "only_on_r2": "Active",
        "only_on_eu": "Active",
        "pooled_on_eu": "Active",
    }
    assert st["idle"]["status"] == "Locked"
    for name in ("only_on_r1", "only_on_r2", "only_on_eu", "pooled_on_eu"):
        assert sc.role(name)["can_login"] is True, name  # type: ignore[index]
    assert sc.role("idle")["can_login"] is False  # type: ignore[index]
    assert sc.history("drop") == []
    marks = watermarks(sc)
    assert set(marks) == {PRIMARY, R1, R2, f"{EU_REGION}/{EU}"}
    assert all(m[0] is not None for m in marks.values()), marks  # each one's connection events read
    assert marks[f"{EU_REGION}/{EU}"][1:] == (instance_group_name(EU), EU_REGION, None)  # every stream
    text = task_log()
    assert f"read replica {EU} ({EU_REGION})" in text and f"{R2} ({HOME}, replica of {R1})" in text
    # the alert and the status page name the instances read
    [alert] = h.messages()
    assert f"Logins and open sessions read on: {PRIMARY}, {R1}, {EU_REGION}/{EU}, {R2}\n" in alert["message"]
    cluster = load(h.config_path).clusters[0]
    page = queries.read_status(cluster, bounded_connector(sc.pg_conn_id))
    assert [(i.instance, i.log_group, i.region_name) for i in page.instances] == [
        (f"{EU_REGION}/{EU}", instance_group_name(EU), EU_REGION),
        (PRIMARY, instance_group_name(PRIMARY), HOME),
        (R1, instance_group_name(R1), HOME),
        (R2, instance_group_name(R2), HOME),
    ]


@pytest.mark.single_pg_version(
    "what stops a replica from being read is AWS's or the network's, not PostgreSQL's"
)
@pytest.mark.parametrize("broken", ["export off", "no log group", "unreachable"])
def test_a_replica_that_cannot_be_read_refuses_lock_and_drop(
    scenario: Scenario, tmp_path: Path, airflow_db: None, broken: str, task_log: Callable[[], str]
) -> None:
    sc = scenario
    h = DagHarness(sc, tmp_path, db_instance=PRIMARY)
    create_read_replica(h.rds, R1, PRIMARY, exports=[] if broken == "export off" else ["postgresql"])
    seed(sc, [], {"idle": 120})
    here = endpoint(sc.pg)  # the primary's server plays the replica's too: its sessions can be read
    replica = f"127.0.0.1:{free_port()}" if broken == "unreachable" else here
    h.write_config(instance_endpoints={PRIMARY: here, R1: replica})
    assert sc.login("postgres", password=sc.pg.password)
    ship(sc, PRIMARY)
    if broken != "no log group" and broken != "export off":
        assert sc.login("postgres", password=sc.pg.password)
        ship(sc, R1)

    states = h.run()
    assert states["sync_roles"] == "success", states
    failed = "ingest_logins" if broken == "no log group" else "plan"
    assert states[failed] == "failed" and states["report"] == "failed", states
    assert states["lock_users"] != "success" and states["delete_users"] != "success", states
    assert sc.role("idle")["can_login"] is True  # type: ignore[index]
    assert sc.statuses()["idle"]["status"] == "Active"
    text = task_log()
    expected = {
        "export off": f"instance guard: {R1}: does not export its PostgreSQL log to CloudWatch Logs",
        "no log group": f"CloudWatch log group '{instance_group_name(R1)}' not found in region {HOME}: "
        f"enable the 'postgresql' log export on DB instance '{R1}'",
        "unreachable": f"session guard: open sessions could not be read on {R1}: OperationalError",
    }[broken]
    assert expected in text
    if broken == "export off":
        assert f"aws rds modify-db-instance --region {HOME} --db-instance-identifier {R1}" in text


@pytest.mark.single_pg_version("the subject is RDS's description of the instance, not PostgreSQL")
def test_a_replica_or_an_instance_without_export_is_refused_as_the_target(
    scenario: Scenario, tmp_path: Path, airflow_db: None, task_log: Callable[[], str]
) -> None:
    sc = scenario
    h = DagHarness(sc, tmp_path, db_instance=PRIMARY)
    create_read_replica(h.rds, R1, PRIMARY, exports=["postgresql"])
    h.write_config(db_instance_id=R1, instance_endpoints=None)
    states = h.run(dag_id="inactive_users__test_rds_r1")
    assert states["preflight"] == "failed", states
    text = task_log()
    assert (
        f"DB instance '{R1}' is a read replica of '{PRIMARY}' ({HOME}): its roles are the source's, and "
        f"read-only here. Configure db_instance_id: {PRIMARY} (region_name: {HOME}) instead"
    ) in text

    h.rds.modify_db_instance(
        DBInstanceIdentifier=PRIMARY, CloudwatchLogsExportConfiguration={"DisableLogTypes": ["postgresql"]}
    )
    h.write_config()
    states = h.run()
    assert states["preflight"] == "failed", states
    text = task_log()
    assert (
        f"DB instance '{PRIMARY}' does not export its PostgreSQL log to CloudWatch Logs "
        f"(EnabledCloudwatchLogsExports=[]), so its logins cannot be read. Fix: aws rds "
        f"modify-db-instance --region {HOME} --db-instance-identifier {PRIMARY}"
    ) in text


@pytest.mark.single_pg_version(
    "replicas come and go in RDS's description; the standby is the same on every version"
)
def test_a_replica_added_between_runs_is_read_and_a_removed_one_is_read_a_last_time(
    scenario: Scenario, tmp_path: Path, airflow_db: None
) -> None:
    sc = scenario
    h = DagHarness(sc, tmp_path, db_instance=PRIMARY)
    seed(sc, [], {"only_on_new": 10, "last_on_removed": 10, "idle": 120})
    here = endpoint(sc.pg)
    assert sc.login("postgres", password=sc.pg.password)
    ship(sc, PRIMARY)
    states = h.run()  # no replica yet
    assert states["report"] == "success", states
    assert set(watermarks(sc)) == {PRIMARY}
    assert sc.statuses()["idle"]["status"] == "Locked"

    with running_standby(sc.pg) as standby:
        # a replica is created; a role logs in there only, before the next run. The config names
        # no replica; only where this test's server listens (moto's endpoints answer nowhere)
        create_read_replica(h.rds, R1, PRIMARY, exports=["postgresql"])
        h.write_config(instance_endpoints={PRIMARY: here, R1: endpoint(standby)})
        sc.skip_log(standby)
        log_in(standby, "only_on_new")
        assert ship(sc, R1, standby) > 0
        assert sc.login("postgres", password=sc.pg.password)
        ship(sc, PRIMARY)
        sc.set_last_login("only_on_new", 120)  # as the state says: its only login since is on the replica
        states = h.run()
        assert states["report"] == "success", states
        assert set(watermarks(sc)) == {PRIMARY, R1}
        assert sc.statuses()["only_on_new"]["status"] == "Active"
        assert sc.role("only_on_new")["can_login"] is True  # type: ignore[index]

        # a role logs in on the replica, which is then deleted before the next run
        log_in(standby, "last_on_removed")
        assert ship(sc, R1, standby) > 0
    h.rds.delete_db_instance(DBInstanceIdentifier=R1, SkipFinalSnapshot=True)
    assert sc.login("postgres", password=sc.pg.password)
    ship(sc, PRIMARY)
    sc.set_last_login("last_on_removed", 120)
    states = h.run()
    assert states["report"] == "success", states
    assert sc.statuses()["last_on_removed"]["status"] == "Active"
    assert sc.role("last_on_removed")["can_login"] is True  # type: ignore[index]
    assert set(watermarks(sc)) == {PRIMARY}
    stopped = sc.sql(
        "SELECT user_name, reason, detail->>'log_group' FROM inactive_users.action_history "
        "WHERE action = 'stopped_reading'"
    )
    assert len(stopped) == 1 and stopped[0][0] == R1 and stopped[0][2] == instance_group_name(R1)
    assert "no longer in the topology; its log was read a last time" in stopped[0][1]


@pytest.mark.single_pg_version("a removed replica's log group is AWS's; PostgreSQL is not the subject")
def test_a_removed_replica_whose_log_is_gone_refuses_until_overridden(
    scenario: Scenario, tmp_path: Path, airflow_db: None, task_log: Callable[[], str]
) -> None:
    sc = scenario
    h = DagHarness(sc, tmp_path, db_instance=PRIMARY)
    create_read_replica(h.rds, R1, PRIMARY, exports=["postgresql"])
    seed(sc, [], {"idle": 10})
    here = endpoint(sc.pg)  # the primary's server plays the replica's too
    h.write_config(instance_endpoints={PRIMARY: here, R1: here})
    for instance in (PRIMARY, R1):
        assert sc.login("postgres", password=sc.pg.password)
        ship(sc, instance)
    states = h.run()
    assert states["report"] == "success", states
    assert set(watermarks(sc)) == {PRIMARY, R1}

    # the replica is deleted, and its log group with it, before the next run could read it
    h.rds.delete_db_instance(DBInstanceIdentifier=R1, SkipFinalSnapshot=True)
    sc.logs.delete_log_group(logGroupName=instance_group_name(R1))
    assert sc.login("postgres", password=sc.pg.password)
    ship(sc, PRIMARY)
    sc.set_last_login("idle", 120)
    states = h.run()
    assert states["ingest_logins"] == "success" and states["plan"] == "failed", states
    assert sc.role("idle")["can_login"] is True  # type: ignore[index]
    gap = sc.sql(
        "SELECT retention_gap FROM inactive_users.user_login_job_status WHERE instance_name = %s", R1
    )
    assert gap and f"{R1}: left the topology, and its log after" in gap[0][0]
    assert "could not be read (LogSourceError: CloudWatch log group" in gap[0][0]
    text = task_log()
    assert f"retention guard: {R1}: left the topology" in text

    # a DBA accepts it: the row goes with a history row saying so, and the run acts
    states = h.run({"override_retention": True})
    assert states["report"] == "success", states
    assert set(watermarks(sc)) == {PRIMARY}
    assert sc.statuses()["idle"]["status"] == "Locked"
    [(reason,)] = sc.sql(
        "SELECT reason FROM inactive_users.action_history "
        "WHERE action = 'stopped_reading' AND user_name = %s",
        R1,
    )
    assert "was not read in full" in reason and "accepted by override_retention" in reason
