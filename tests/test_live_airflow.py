"""The cluster DAG under a real Airflow (scheduler, dag-processor, api-server), through REST API v2.

``dag.test()`` runs every task in one process; here the scheduler queues them to an executor, the
task runners talk to the api-server's execution API, and the test sees only what the UI sees: it
unpauses and triggers through the REST API, reads each task's state and log there, then checks the
target cluster. Once with LocalExecutor and once with CeleryExecutor and a worker on the machine's
Redis: how a fleet outgrows one machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devstack.airflowenv import airflow_env
from devstack.awsfixtures import drain_alerts
from devstack.liveairflow import LiveAirflow, redis_unreachable_reason
from devstack.motoserver import MotoServer
from devstack.pgcluster import PgBinaries
from devstack.stories import ROLE_PASSWORD
from tests.conftest import PASSWORD
from tests.livestage import fresh_scenario, stage_demo
from tests.scenario import Scenario

pytestmark = pytest.mark.single_pg_version("the subject is the Airflow deployment, not PostgreSQL")

DAG_ID = "inactive_users__test_aurora"
QUOTED = 'Zoë "Q" O\'Brien'  # a locked role whose name needs quoting
# the part of the run the test measures, printed for the note (no assertion on it)
TIMINGS: dict[str, dict[str, float]] = {}


@dataclass
class LiveStage:
    sc: Scenario
    af: LiveAirflow
    sqs: Any
    queue_url: str
    executor: str


@pytest.fixture(scope="module", params=["LocalExecutor", "CeleryExecutor"])
def live(
    request: pytest.FixtureRequest,
    pg_binaries: PgBinaries,
    pg_template: Path,
    moto_server: MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveStage]:
    """The demo's roles on a fresh cluster, Aurora and SNS in moto, and a live Airflow on them."""
    executor = str(request.param)
    if executor == "CeleryExecutor" and (reason := redis_unreachable_reason()):
        pytest.skip(reason)
    started = time.monotonic()
    work = tmp_path_factory.mktemp(f"live-{executor}")
    with fresh_scenario(pg_template, pg_binaries, moto_server) as sc:
        sqs, queue_url = stage_demo(sc, work / "inactive_users.yaml")
        env = airflow_env(work, work / "inactive_users.yaml", "iu", sc.pg, moto_server)
        components = ("api-server", "scheduler", "dag-processor")  # the DAG defers nothing
        with LiveAirflow(work, env, executor=executor, components=components) as af:
            TIMINGS[executor] = {"start": time.monotonic() - started}
            yield LiveStage(sc, af, sqs, queue_url, executor)
            stopping = time.monotonic()
        TIMINGS[executor]["stop"] = time.monotonic() - stopping
        TIMINGS[executor]["total"] = time.monotonic() - started
        print(
            f"\nlive Airflow {executor}: "
            + json.dumps({k: round(v, 1) for k, v in TIMINGS[executor].items()})
        )


def test_a_triggered_run_locks_drops_and_logs_through_the_rest_api(live: LiveStage) -> None:
    af, sc = live.af, live.sc
    t0 = time.monotonic()
    af.wait_for_dag(DAG_ID)
    t1 = time.monotonic()
    run_id = af.trigger(DAG_ID, conf={"exclude_users": ["carl_200"]})
    state = af.wait_for_run(DAG_ID, run_id, timeout=240)
    TIMINGS[live.executor].update({"dag_parsed": t1 - t0, "run": time.monotonic() - t1})
    states = af.task_states(DAG_ID, run_id)
    assert state == "success", f"{states}\n{af.tails()}"
    assert states == {
        "preflight": "success",
        "sync_roles": "success",
        "ingest_logins": "success",
        "plan": "success",
        "choose_actions": "success",
        "lock_users": "success",
        "delete_users": "success",
        "nothing_to_do": "skipped",
        "alert": "success",
        "write_evidence": "skipped",  # no evidence.s3_uri in this config
        "report": "success",
    }, af.task_log(DAG_ID, run_id, "plan")

    # each task's own log, as the UI shows it
    preflight = af.task_log(DAG_ID, run_id, "preflight")
    assert "setting exclude_users = ('svc_etl', 'carl_200') (from config + trigger conf)" in preflight, (
        preflight
    )
    ingest = af.task_log(DAG_ID, run_id, "ingest_logins")
    assert "test-aurora-instance-1" in ingest and "test-aurora-instance-2" in ingest, ingest
    report = af.task_log(DAG_ID, run_id, "report")
    assert f"run {run_id} on test-aurora:" in report, report
    assert "7 candidates, 3 outcomes (2 locked, 1 ready_to_delete)" in report, report
    assert QUOTED in report, report
    lock = af.task_log(DAG_ID, run_id, "lock_users")
    assert "lock: 'ana_100' locked (inactive 100 days)" in lock, lock
    alert = af.task_log(DAG_ID, run_id, "alert")
    assert "alert sent to ['sns:arn:aws:sns:us-east-1:123456789012:dba-alerts']" in alert, alert

    # what the run did to the target cluster
    with psycopg.connect(sc.pg.dsn(), autocommit=True) as conn:
        can_login = dict(conn.execute("SELECT rolname::text, rolcanlogin FROM pg_authid").fetchall())
    st = sc.statuses()
    assert can_login["ana_100"] is False and st["ana_100"]["status"] == "Locked"
    assert can_login[QUOTED] is False and st[QUOTED]["status"] == "Locked"
    assert st["bob_200_owner"]["status"] == "ReadyToDelete" and can_login["bob_200_owner"] is False
    assert can_login["carl_200"] is True and "carl_200" not in st  # excluded by the trigger conf
    assert can_login["app_daily"] is True and st["app_daily"]["status"] == "Active"
    assert "svc_etl" not in st and can_login["svc_etl"] is True
    actions = {(a, u) for a, u, r in sc.history() if r == run_id}
    assert {("lock", "ana_100"), ("lock", QUOTED), ("ready_to_delete", "bob_200_owner")} <= actions

    [message] = drain_alerts(live.sqs, live.queue_url)
    assert message["subject"].startswith("[inactive_users] test-aurora: 2 locked"), message
    assert PASSWORD not in json.dumps(message) and ROLE_PASSWORD not in report + alert + preflight + lock
