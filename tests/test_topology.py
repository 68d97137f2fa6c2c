"""A real Aurora-like topology: a writer and a real hot standby as the reader, each with its own log
stream and its own sessions; and an Aurora Global Database whose secondary is in another region.

The reader is a streaming replica (``pg_basebackup -R``), so a session or a login there is invisible
on the writer, as on Aurora. The DAG runs end to end with ``dag.test()``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from devstack.motoserver import boto_client
from devstack.pgcluster import PgCluster, free_port
from inactive_users.engine import SafetyGuardError
from inactive_users.postgres.instances import airflow_connector
from tests.dagrun import DagHarness
from tests.scenario import ROLE_PASSWORD, Scenario

DR_REGION = "eu-west-1"
DR_CLUSTER = "test-aurora-dr"
DR_INSTANCE = f"{DR_CLUSTER}-instance-1"


def db_now(sc: Scenario) -> datetime:
    return sc.sql("SELECT now()")[0][0]  # type: ignore[no-any-return]


def endpoint(server: PgCluster) -> str:
    return f"127.0.0.1:{server.port}"


def seed(sc: Scenario, standby: PgCluster, names: list[str], days: float = 120) -> None:
    """Roles tracked by an earlier run, with clocks past the lock threshold, visible on the standby."""
    for name in names:
        sc.create_role(name)
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    for name in names:
        sc.set_last_login(name, days)
    standby.wait_caught_up()


def test_reader_sessions_and_logins_keep_roles_active(
    scenario: Scenario, pg_standby: PgCluster, dag_harness: DagHarness
) -> None:
    sc, h, standby = scenario, dag_harness, pg_standby
    seed(sc, standby, ["pooled_on_reader", "login_on_reader", "idle"])
    h.write_config(instance_endpoints={sc.writer: endpoint(sc.pg), sc.reader: endpoint(standby)})
    # a pool's connection opened long ago on the reader: its login is not in any log read now
    pooled = psycopg.connect(standby.dsn(user="pooled_on_reader", password=ROLE_PASSWORD), autocommit=True)
    try:
        sc.skip_log(standby)
        with psycopg.connect(standby.dsn(user="login_on_reader", password=ROLE_PASSWORD)):
            pass
        assert sc.ship(sc.reader, server=standby) > 0
        assert sc.login("postgres", password=sc.pg.password)
        assert sc.ship(sc.writer) > 0
        # neither role is visible on the writer: the old engine locked both
        on_writer = sc.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'pooled_on_reader'")
        assert on_writer == [(0,)]

        states = h.run()
        assert states["report"] == "success", states
    finally:
        pooled.close()
    st = sc.statuses()
    assert st["pooled_on_reader"]["status"] == "Active"
    assert st["login_on_reader"]["status"] == "Active"
    assert st["idle"]["status"] == "Locked"
    assert abs(st["login_on_reader"]["last_login"] - db_now(sc)) < timedelta(minutes=2)
    assert sc.role("pooled_on_reader")["can_login"] is True  # type: ignore[index]
    assert sc.role("login_on_reader")["can_login"] is True  # type: ignore[index]


@pytest.mark.single_pg_version("an unreachable instance is the network's doing, not PostgreSQL's")
def test_an_unreachable_instance_refuses_lock_and_drop_but_sync_and_ingest_run(
    scenario: Scenario, dag_harness: DagHarness
) -> None:
    sc, h = scenario, dag_harness
    sc.create_role("idle")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("idle", 120)
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    h.write_config(instance_endpoints={sc.writer: endpoint(sc.pg), sc.reader: nobody})
    for instance in (sc.writer, sc.reader):
        assert sc.login("postgres", password=sc.pg.password)
        sc.ship(instance)

    states = h.run()
    assert states["sync_roles"] == "success" and states["ingest_logins"] == "success", states
    assert states["plan"] == "failed" and states["report"] == "failed", states
    assert sc.role("idle")["can_login"] is True  # type: ignore[index]
    assert sc.statuses()["idle"]["status"] == "Active"

    # the refusal names the instance and the cause
    eng = sc.engine()
    eng.sessions = {
        sc.writer: airflow_connector(sc.pg_conn_id, endpoint(sc.pg)),
        sc.reader: airflow_connector(sc.pg_conn_id, nobody),
        "test-aurora-instance-3": None,
    }
    plan = eng.plan([sc.writer, sc.reader])
    assert plan.guard_error is not None and "session guard" in plan.guard_error
    assert f"{sc.reader}: OperationalError" in plan.guard_error
    assert "test-aurora-instance-3: no endpoint known for this instance" in plan.guard_error
    assert sc.pg.password not in plan.guard_error
    with pytest.raises(SafetyGuardError, match="session guard"):
        eng.lock(plan)
    assert sc.role("idle")["can_login"] is True  # type: ignore[index]


def test_wrong_password_on_an_instance_is_a_refusal_not_a_skip(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("idle")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("idle", 120)
    sc.sql("CREATE ROLE other_job LOGIN PASSWORD 'right-one'")
    sc.use_job_user("other_job", "wrong-one")
    eng = sc.engine()
    eng.sessions = {sc.reader: airflow_connector(sc.pg_conn_id, endpoint(sc.pg))}
    scan = eng._scan_sessions(sc.admin)
    assert scan.read == [] and "password authentication failed" in scan.errors[sc.reader]
    assert "wrong-one" not in scan.errors[sc.reader]


def _global_database(sc: Scenario, tmp_path: Path, *, exports: bool = True) -> DagHarness:
    """A harness whose cluster is the primary of a global cluster, a secondary in another region."""
    h = DagHarness(sc, tmp_path, global_cluster="test-global")
    dr = boto_client(sc.moto.endpoint_url, "rds", DR_REGION)
    dr.create_db_cluster(
        DBClusterIdentifier=DR_CLUSTER,
        Engine="aurora-postgresql",
        GlobalClusterIdentifier="test-global",
        EnableCloudwatchLogsExports=["postgresql"] if exports else [],
    )
    dr.create_db_instance(
        DBInstanceIdentifier=DR_INSTANCE,
        DBInstanceClass="db.r6g.large",
        Engine="aurora-postgresql",
        DBClusterIdentifier=DR_CLUSTER,
    )
    return h


@pytest.mark.single_pg_version(
    "a secondary's standby is a reader's (tested on every version); the subject is the Global Database"
)
def test_global_database_secondary_logins_and_sessions_count(
    scenario: Scenario, pg_standby: PgCluster, tmp_path: Path, airflow_db: None
) -> None:
    sc, standby = scenario, pg_standby
    h = _global_database(sc, tmp_path)
    seed(sc, standby, ["used_in_dr", "pooled_in_dr", "idle"])
    here = endpoint(sc.pg)
    # discovery by DescribeGlobalClusters; the secondary's instance is the standby (a physical
    # replica, as Aurora's secondary is), reached through instance_endpoints
    h.write_config(
        instance_endpoints={sc.writer: here, sc.reader: here, DR_INSTANCE: endpoint(standby)},
        global_secondaries=None,
    )
    pooled = psycopg.connect(standby.dsn(user="pooled_in_dr", password=ROLE_PASSWORD), autocommit=True)
    try:
        sc.skip_log(standby)
        with psycopg.connect(standby.dsn(user="used_in_dr", password=ROLE_PASSWORD)):
            pass
        assert sc.ship(DR_INSTANCE, server=standby, cluster_id=DR_CLUSTER, region=DR_REGION) > 0
        for instance in (sc.writer, sc.reader):
            assert sc.login("postgres", password=sc.pg.password)
            sc.ship(instance)
        states = h.run()
        assert states["report"] == "success", states
    finally:
        pooled.close()
    st = sc.statuses()
    assert (st["used_in_dr"]["status"], st["pooled_in_dr"]["status"], st["idle"]["status"]) == (
        "Active",
        "Active",
        "Locked",
    )
    assert abs(st["used_in_dr"]["last_login"] - db_now(sc)) < timedelta(minutes=2)
    marks = dict(sc.sql("SELECT instance_name, last_event_time FROM inactive_users.user_login_job_status"))
    assert marks[f"{DR_CLUSTER}/{DR_INSTANCE}"] is not None


@pytest.mark.single_pg_version("what makes the secondary unreadable is its AWS description, not PostgreSQL")
@pytest.mark.parametrize("broken", ["no log group", "no endpoint"])
def test_an_unreadable_secondary_blocks_lock_and_drop(
    scenario: Scenario, tmp_path: Path, airflow_db: None, broken: str
) -> None:
    sc = scenario
    h = _global_database(sc, tmp_path)
    sc.create_role("idle")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("idle", 120)
    here = endpoint(sc.pg)
    endpoints = {sc.writer: here, sc.reader: here}
    if broken == "no endpoint":
        # the secondary's log is there, but its sessions cannot be read (moto's endpoint is fake)
        assert sc.login("postgres", password=sc.pg.password)
        sc.ship(DR_INSTANCE, cluster_id=DR_CLUSTER, region=DR_REGION)
    else:
        endpoints[DR_INSTANCE] = here
    h.write_config(instance_endpoints=endpoints, global_secondaries=None)
    for instance in (sc.writer, sc.reader):
        assert sc.login("postgres", password=sc.pg.password)
        sc.ship(instance)

    states = h.run()
    assert states["report"] == "failed", states
    failed = "ingest_logins" if broken == "no log group" else "plan"
    assert states[failed] == "failed", states
    assert states["lock_users"] != "success"
    assert sc.role("idle")["can_login"] is True  # type: ignore[index]


@pytest.mark.single_pg_version("the subject is the Global Database's AWS topology, not PostgreSQL")
def test_a_secondary_cluster_refuses_to_run_the_job(
    scenario: Scenario, tmp_path: Path, airflow_db: None, capfd: pytest.CaptureFixture[str]
) -> None:
    sc = scenario
    h = _global_database(sc, tmp_path)
    h.write_config(
        cluster_id=DR_CLUSTER, region_name=DR_REGION, instance_endpoints=None, global_secondaries=None
    )
    states = h.run(dag_id="inactive_users__test_aurora_dr")
    assert states["preflight"] == "failed", states
    out = capfd.readouterr()
    assert "is a secondary of global cluster 'test-global'" in out.out + out.err
    assert f"cluster:{sc.cluster_id}) instead" in out.out + out.err
