"""Approval before DROP ROLE on a live Airflow: reject, time out, approve, through the REST API.

A DBA answers on Airflow's Required Actions page, which PATCHes the task's hitlDetails; the test
does the same, as the user the REST API's token belongs to. A timeout is the scheduler's: it takes
the default option (Reject) once ``approval_timeout_hours`` have passed. Three runs of one cluster:

1. reject: the roles due to be dropped are locked (not dropped), and the alert and report say who
   rejected; the alert that asked links to the approval page;
2. timeout: asked again (the roles are still due), nobody answers, nothing is dropped;
3. approve: the role nothing depends on is dropped, the owner of a table is flagged ReadyToDelete;
4. marked successful by hand in the UI, unanswered: delete_users refuses, nothing is dropped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from devstack.airflowenv import airflow_env
from devstack.awsfixtures import drain_alerts
from devstack.liveairflow import LiveAirflow
from devstack.motoserver import MotoServer
from devstack.pgcluster import PgBinaries
from devstack.stories import seed_last_login
from inactive_users.face.compat import HITL_WAIT_STATE
from tests.conftest import PASSWORD
from tests.livestage import fresh_scenario, stage_demo
from tests.scenario import Scenario

pytestmark = [
    pytest.mark.single_pg_version("the subject is the Airflow deployment, not PostgreSQL"),
    pytest.mark.compat,
]

DAG_ID = "inactive_users__test_aurora"
TASK = "approve_drops"
#: 36 s: long enough to answer in (the test answers within a few seconds of the request), short
#: enough to wait out in the timeout run
TIMEOUT_HOURS = 0.01
DROP, FLAG = "carl_200", "bob_200_owner"  # due to be dropped: owns nothing / owns a table


@dataclass
class Stage:
    sc: Scenario
    af: LiveAirflow
    sqs: Any
    queue_url: str


@pytest.fixture(scope="module")
def stage(
    pg_binaries: PgBinaries,
    pg_template: Path,
    moto_server: MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stage]:
    work = tmp_path_factory.mktemp("live-approval")
    with fresh_scenario(pg_template, pg_binaries, moto_server) as sc:
        config = work / "inactive_users.yaml"
        sqs, queue_url = stage_demo(sc, config, approve_drops=True, approval_timeout_hours=TIMEOUT_HOURS)
        env = airflow_env(work, config, "iu", sc.pg, moto_server)
        env["AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL"] = "2"  # the timeout sweep
        components = ["api-server", "scheduler", "dag-processor"]
        if HITL_WAIT_STATE == "deferred":  # Airflow 3.1, 3.2: the question waits in the triggerer
            components.append("triggerer")
        with LiveAirflow(work, env, executor="LocalExecutor", components=components) as af:
            af.wait_for_dag(DAG_ID)
            yield Stage(sc, af, sqs, queue_url)


def hitl_path(run_id: str) -> str:
    return f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{TASK}/-1/hitlDetails"


def wait_for_question(af: LiveAirflow, run_id: str) -> dict[str, Any]:
    """The approval request, once the task waits for it to be answered (as the UI lists it).

    Then, as a person reading it would, it waits until the scheduler has taken in the executor's
    report that the task process parked (3.3) or deferred (3.1, 3.2) and exited: an answer that
    lands before that report is read makes the scheduler fail the task ("state changed
    externally" on 3.3.2; on 3.1.8 a quick answer failed the task too). Nothing is dropped then,
    but the run fails; README says so.
    """

    def asked() -> dict[str, Any] | None:
        if af.task_states(DAG_ID, run_id).get(TASK) != HITL_WAIT_STATE:
            return None
        got = af.api("GET", hitl_path(run_id))
        assert got.status_code == 200, got.text
        return dict(got.json())

    question = dict(af.poll(f"{TASK} {HITL_WAIT_STATE}", asked, timeout=240))
    parked = f"task_id={TASK}, run_id={run_id},"  # the same words in 3.1, 3.2 and 3.3

    def reported() -> bool:
        log = af.log_path("scheduler").read_text(errors="replace")
        return any(
            "TaskInstance Finished:" in line and parked in line and f"state={HITL_WAIT_STATE}" in line
            for line in log.splitlines()
        )

    af.poll("the scheduler to read that the task parked", reported, timeout=60)
    return question


def fleet_rows(af: LiveAirflow) -> list[dict[str, Any]]:
    r = af.client.get("/inactive-users/api/clusters", headers={"Authorization": f"Bearer {af.token()}"})
    assert r.status_code == 200, r.text
    return list(r.json()["clusters"])


def answer(af: LiveAirflow, run_id: str, option: str) -> dict[str, Any]:
    response = af.api("PATCH", hitl_path(run_id), json={"chosen_options": [option]})
    assert response.status_code == 200, response.text
    return dict(response.json())


def can_login(sc: Scenario) -> dict[str, bool]:
    with psycopg.connect(sc.pg.dsn(), autocommit=True) as conn:
        return dict(conn.execute("SELECT rolname::text, rolcanlogin FROM pg_authid").fetchall())


def alerts_of_the_run(stage: Stage) -> tuple[dict[str, str], dict[str, str]]:
    """The alert that asked, and the run's own alert (SQS does not keep their order)."""
    got = drain_alerts(stage.sqs, stage.queue_url)
    asked = [m for m in got if "approve dropping" in m["subject"]]
    others = [m for m in got if m not in asked]
    assert len(asked) == 1 and len(others) == 1, got
    return asked[0], others[0]


def finish(stage: Stage, run_id: str) -> dict[str, str]:
    state = stage.af.wait_for_run(DAG_ID, run_id, timeout=240)
    states = stage.af.task_states(DAG_ID, run_id)
    failed = [t for t, s in states.items() if s == "failed"]
    logs = "\n".join(f"--- {t}:\n{stage.af.task_log(DAG_ID, run_id, t)[-3000:]}" for t in failed)
    assert state == "success", f"{states}\n{logs}"
    return states


def test_reject_then_timeout_then_approve(stage: Stage) -> None:
    af, sc = stage.af, stage.sc
    drain_alerts(stage.sqs, stage.queue_url)

    # 1. reject ----------------------------------------------------------------------------------
    started = time.monotonic()
    run_id = af.trigger(DAG_ID, conf={})
    question = wait_for_question(af, run_id)
    assert question["subject"] == "[inactive_users] test-aurora: approve dropping 2 inactive roles"
    assert question["options"] == ["Approve", "Reject"] and question["defaults"] == ["Reject"]
    assert question["body"].startswith("```text\nCluster: test-aurora\n")  # shown as written
    drops, flags = question["body"].split("Would only be flagged ReadyToDelete")
    assert "Would be dropped (DROP ROLE): 1" in drops and f"  - {DROP}: last login " in drops
    assert f"  - {FLAG}: last login " in flags and "owns table sales.q3_report" in flags
    # locks are not asked about: the roles due to be dropped are locked before the question
    logins = can_login(sc)
    assert logins[DROP] is False and logins[FLAG] is False and logins["ana_100"] is False
    # the fleet page shows the drops waiting, with the way to the question, and the run
    [row] = fleet_rows(af)
    assert (row["awaiting_approval"], row["last_run_id"], row["last_run_state"]) == (2, run_id, "running")
    assert (
        row["links"]["required_actions"]
        == f"/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/{TASK}/required_actions"
    )

    response = answer(af, run_id, "Reject")
    rejected_by = response["responded_by"]["name"]
    states = finish(stage, run_id)
    assert (states[TASK], states["delete_users"], states["alert"]) == ("success", "skipped", "success")
    print(f"\nlive approval: reject run {time.monotonic() - started:.1f} s")
    assert can_login(sc)[DROP] is False and sc.statuses()[DROP]["status"] == "Locked"
    assert sc.statuses()[FLAG]["status"] == "Locked"  # not flagged either: nothing of the drop ran
    done = {a for a, _, r in sc.history() if r == run_id}
    assert "lock" in done and not done & {"drop", "ready_to_delete", "drop_failed", "flag_failed"}, done

    [row] = fleet_rows(af)  # answered: nothing waits; the run locked, so it acted
    assert (row["awaiting_approval"], row["last_run_state"], row["runs_not_acted"]) == (0, "success", 0)
    assert row["days_since_acted"] == 0 and row["links"]["required_actions"] is None
    request, run_alert = alerts_of_the_run(stage)
    assert request["subject"] == question["subject"]
    link = f"{af.base_url}/dags/{DAG_ID}/runs/{run_id}/tasks/{TASK}/required_actions"
    assert f"Answer in Airflow: {link}" in request["message"], request["message"]
    assert run_alert["subject"].startswith("[inactive_users] test-aurora: 4 locked, drops rejected"), (
        af.task_log(DAG_ID, run_id, TASK) + "\n-----\n" + af.task_log(DAG_ID, run_id, "alert")
    )
    assert f"Drops REJECTED by {rejected_by} at " in run_alert["message"]
    report = af.task_log(DAG_ID, run_id, "report")
    assert f"Drops REJECTED by {rejected_by} at " in report and "stay locked" in report, report
    approve_log = af.task_log(DAG_ID, run_id, TASK)
    assert "asking for approval, waiting up to 0.01 hours" in approve_log, approve_log
    assert f"Drops REJECTED by {rejected_by} at " in approve_log, approve_log

    # 2. timeout ---------------------------------------------------------------------------------
    started = time.monotonic()
    run_id = af.trigger(DAG_ID, conf={})
    question = wait_for_question(af, run_id)  # asked again: the roles are still due
    assert DROP in question["body"]
    states = finish(stage, run_id)
    assert (states[TASK], states["delete_users"]) == ("success", "skipped")
    print(f"live approval: timeout run {time.monotonic() - started:.1f} s")
    detail = af.api("GET", hitl_path(run_id)).json()
    assert detail["chosen_options"] == ["Reject"] and detail["responded_by_user"] is None
    assert can_login(sc)[DROP] is False and DROP in sc.statuses()
    request, run_alert = alerts_of_the_run(stage)
    assert run_alert["subject"].startswith("[inactive_users] test-aurora: drops timed out"), run_alert
    assert (
        f"Drops TIMED OUT: nobody answered approve_drops within {TIMEOUT_HOURS:g} hours"
        in run_alert["message"]
    )
    assert "Drops TIMED OUT" in af.task_log(DAG_ID, run_id, "report")

    # 3. approve ---------------------------------------------------------------------------------
    started = time.monotonic()
    run_id = af.trigger(DAG_ID, conf={})
    wait_for_question(af, run_id)
    approved_by = answer(af, run_id, "Approve")["responded_by"]["name"]
    states = finish(stage, run_id)
    assert (states[TASK], states["delete_users"]) == ("success", "success")
    print(f"live approval: approve run {time.monotonic() - started:.1f} s")
    assert DROP not in can_login(sc) and DROP not in sc.statuses()
    assert sc.statuses()[FLAG]["status"] == "ReadyToDelete"
    actions = {(a, u) for a, u, r in sc.history() if r == run_id}
    assert {("drop", DROP), ("ready_to_delete", FLAG)} <= actions
    delete = af.task_log(DAG_ID, run_id, "delete_users")
    assert f"Drops APPROVED by {approved_by} at " in delete, delete
    request, run_alert = alerts_of_the_run(stage)
    assert run_alert["subject"].startswith(
        "[inactive_users] test-aurora: 1 dropped, 1 ready to delete, drops approved"
    ), run_alert
    assert PASSWORD not in json.dumps([request, run_alert, question]) + delete

    # 4. marked successful by hand, with no answer ----------------------------------------------
    late = "dave_200"
    sc.create_role(late)
    seed_last_login(sc.admin, late, 200)
    run_id = af.trigger(DAG_ID, conf={})
    assert late in wait_for_question(af, run_id)["body"]
    marked = af.api(
        "PATCH", f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{TASK}", json={"new_state": "success"}
    )
    assert marked.status_code == 200, marked.text
    assert af.wait_for_run(DAG_ID, run_id, timeout=240) == "failed"
    states = af.task_states(DAG_ID, run_id)
    assert (states[TASK], states["delete_users"]) == ("success", "failed"), states
    delete = af.task_log(DAG_ID, run_id, "delete_users")
    assert "ApprovalError: approve_drops recorded no answer (was it marked successful by hand?)" in delete
    assert late in can_login(sc) and can_login(sc)[late] is False  # locked, not dropped
    # the run locked before delete_users refused: it stays recorded as a run that acted
    [(outcome, task)] = sc.sql(
        "SELECT outcome, task_id FROM inactive_users.run_outcome WHERE run_id = %s", run_id
    )
    assert (outcome, task) == ("acted", "lock_users")
    assert not {a for a, _, r in sc.history() if r == run_id} & {"drop", "ready_to_delete"}
