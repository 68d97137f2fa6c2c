"""The generated DAG, run end to end with dag.test() against real PostgreSQL and the moto server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from inactive_users.face.steps import MAX_NAMES_IN_XCOM
from inactive_users.postgres import actions
from tests.dagrun import MASTER, DagHarness
from tests.privileges import create_job_user
from tests.scenario import ROLE_PASSWORD, Scenario


@pytest.mark.compat
def test_timeline(scenario: Scenario, dag_harness: DagHarness, capfd: pytest.CaptureFixture[str]) -> None:
    sc, h = scenario, dag_harness
    for name in ["active_w", "active_r", "idle100", "gone200", "owner200", "svc_batch", "quiet", MASTER]:
        sc.create_role(name)
    sc.sql("CREATE DATABASE app2")
    sc.sql("CREATE TABLE ledger (id int)", dbname="app2")
    sc.sql("ALTER TABLE ledger OWNER TO owner200", dbname="app2")
    h.write_config(exclude_users=["svc_batch"])
    # the job runs as the README's least-privileged user, not a superuser
    create_job_user(sc, ["active_w", "active_r", "idle100", "gone200", "owner200", "quiet"])
    eng = sc.engine()
    eng.migrate()
    # history carried over from the AWS sample Lambda: rows by name, no OID
    legacy = {
        "active_w": 120,
        "active_r": 120,
        "idle100": 100,
        "gone200": 200,
        "owner200": 200,
        "svc_batch": 200,
    }
    for name, days in legacy.items():
        sc.sql(
            "INSERT INTO inactive_users.user_login_status (user_name, last_login_time, status) "
            "VALUES (%s, now() - make_interval(days => %s), 'Active')",
            name,
            days,
        )
    assert sc.login("active_w")
    sc.ship(sc.writer)
    assert sc.login("active_r")
    sc.ship(sc.reader)

    states = h.run()
    assert states["preflight"] == "success" and states["report"] == "success", states
    assert states["nothing_to_do"] == "skipped" and states["alert"] == "success"
    assert sc.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'inactive_users_job'") == [(False,)]
    assert {h[2] for h in sc.history("lock")} and "inactive_users_job" in str(
        sc.sql("SELECT DISTINCT actor FROM inactive_users.action_history WHERE action = 'lock'")
    )
    st = sc.statuses()
    assert st["active_w"]["status"] == "Active" and st["active_r"]["status"] == "Active"
    assert st["idle100"]["status"] == "Locked" and sc.role("idle100")["can_login"] is False  # type: ignore[index]
    assert sc.role("gone200") is None and "gone200" not in st
    assert st["owner200"]["status"] == "ReadyToDelete"
    assert st["owner200"]["reason"].endswith("; blocked by: database app2: owns table public.ledger")
    assert "svc_batch" not in st and MASTER not in st
    assert sc.role("svc_batch")["can_login"] is True  # type: ignore[index]

    [alert] = h.messages()
    assert "test-aurora" in alert["subject"]
    body = alert["message"]
    assert "Locked: 1" in body and "idle100: last login" in body
    assert "Dropped (DROP ROLE): 1" in body and "gone200" in body
    assert "owner200" in body and "blocked by: database app2: owns table public.ledger" in body
    assert "svc_batch" not in body and "active_w" not in body

    # a second run the same day changes nothing and sends no alert
    before = sc.snapshot()
    states = h.run()
    assert states["alert"] == "skipped" and states["report"] == "success", states
    assert h.messages() == []
    after = sc.snapshot()
    assert after["roles"] == before["roles"]
    assert after["user_login_status"] == before["user_login_status"]

    # unlock through the trigger form
    states = h.run({"unlock_users": ["idle100"]})
    assert states["report"] == "success"
    assert sc.statuses()["idle100"]["status"] == "Active"
    assert sc.role("idle100")["can_login"] is True  # type: ignore[index]
    assert sc.login("idle100")

    # a dry run changes nothing and alerts a labelled plan
    sc.set_last_login("quiet", 95)
    before = sc.snapshot()
    states = h.run({"dry_run": True})
    assert states["report"] == "success", states
    assert sc.snapshot()["roles"] == before["roles"]
    assert sc.snapshot()["user_login_status"] == before["user_login_status"]
    assert sc.snapshot()["action_history"] == before["action_history"]
    [plan] = h.messages()
    assert plan["subject"].startswith("[inactive_users] DRY RUN test-aurora")
    assert "DRY RUN: nothing was changed" in plan["message"] and "Would lock: 1" in plan["message"]
    assert "quiet: last login" in plan["message"]
    assert "owner200" not in plan["message"]  # still ReadyToDelete: nothing new to say

    # no password appears in any task log, XCom or alert of these runs
    out, err = capfd.readouterr()
    xcoms = _all_xcoms()
    assert "sync_roles" in xcoms and "idle100" in xcoms  # the scan reads real data
    for secret in (sc.pg.password, ROLE_PASSWORD):
        for where, text in (("task logs", out + err), ("XCom", xcoms), ("alerts", body + plan["message"])):
            assert secret not in text, f"a password leaked into {where}"


def _all_xcoms() -> str:
    """Every XCom row of the session's Airflow metadata DB, as text."""
    import sqlite3

    db = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT task_id, value FROM xcom").fetchall()
    return "\n".join(f"{task} {value!s}" for task, value in rows)


def _last_run_xcoms() -> dict[tuple[str, str], Any]:
    """The XComs of the latest DAG run in the session's Airflow metadata DB, by (task id, key)."""
    import json
    import sqlite3

    db = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT task_id, key, value FROM xcom WHERE dag_run_id = (SELECT max(dag_run_id) FROM xcom)"
        ).fetchall()
    # SQLite hands back a number stored in the JSON column as a number
    return {(task, key): json.loads(v) if isinstance(v, str | bytes) else v for task, key, v in rows}


@pytest.mark.single_pg_version("the subject is how many names an XCom carries; PostgreSQL is only the target")
def test_more_roles_than_an_xcom_lists_are_all_acted_on_in_one_run(
    scenario: Scenario, dag_harness: DagHarness
) -> None:
    """Thousands of dormant roles: one run locks and drops every one; XComs carry counts and samples."""
    sc, h = scenario, dag_harness
    n_lock, n_drop = MAX_NAMES_IN_XCOM + 200, MAX_NAMES_IN_XCOM + 100
    sc.sql(
        "DO $$BEGIN"
        f" FOR i IN 1..{n_lock} LOOP EXECUTE format('CREATE ROLE %I LOGIN', 'dormant' || i); END LOOP;"
        f" FOR i IN 1..{n_drop} LOOP EXECUTE format('CREATE ROLE %I LOGIN', 'gone' || i); END LOOP;"
        " END$$"
    )
    sc.create_role("fresh")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    sc.sql(
        "UPDATE inactive_users.user_login_status SET last_login_time = now() - "
        "CASE WHEN user_name LIKE 'dormant%' THEN interval '100 days' ELSE interval '200 days' END "
        "WHERE user_name LIKE 'dormant%' OR user_name LIKE 'gone%'"
    )
    assert sc.login("fresh")
    sc.ship(sc.writer)
    assert sc.login("fresh")
    sc.ship(sc.reader)

    def can_login(prefix: str) -> int:
        [(n,)] = sc.sql("SELECT count(*) FROM pg_roles WHERE rolname LIKE %s AND rolcanlogin", prefix + "%")
        return int(n)

    # a dry run previews every role, and its alert gives the totals
    states = h.run({"dry_run": True})
    assert states["report"] == "success", states
    assert (can_login("dormant"), can_login("gone")) == (n_lock, n_drop)
    [preview] = h.messages()
    assert f"{n_lock} would lock, {n_drop} would drop" in preview["subject"]
    assert f"Would lock: {n_lock}\n" in preview["message"]
    assert f"Would drop (DROP ROLE): {n_drop}\n" in preview["message"]
    assert "more not listed here: the plan task's log lists them" in preview["message"]

    states = h.run()
    assert states["lock_users"] == states["delete_users"] == states["report"] == "success", states
    assert (can_login("dormant"), can_login("gone"), can_login("fresh")) == (0, 0, 1)
    [(gone,)] = sc.sql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'gone%'")
    assert gone == 0
    assert len(sc.history("lock")) == n_lock and len(sc.history("drop")) == n_drop
    st = sc.statuses()
    assert sum(1 for v in st.values() if v["status"] == "Locked") == n_lock

    xcoms = _last_run_xcoms()
    plan = xcoms[("plan", "return_value")]
    assert (plan["lock_total"], plan["delete_total"]) == (n_lock, n_drop)
    assert len(plan["lock_sample"]) == len(plan["delete_sample"]) == MAX_NAMES_IN_XCOM
    for task, n, action in (("lock_users", n_lock, "locked"), ("delete_users", n_drop, "dropped")):
        result = xcoms[(task, "return_value")]
        assert result["total"] == n and result["counts"] == {action: n}
        assert len(result["outcomes_sample"]) == MAX_NAMES_IN_XCOM
    assert xcoms[("report", "return_value")] == {"outcomes": n_lock + n_drop, "failed": 0}
    for (task, key), value in xcoms.items():  # no XCom names more roles to lock, or to drop, than the cap
        text = str(value)
        assert max(text.count("'dormant"), text.count("'gone")) <= MAX_NAMES_IN_XCOM, (task, key)
        assert len(text) < 300_000, (task, key, len(text))

    [alert] = h.messages()
    assert f"{n_lock} locked, {n_drop} dropped" in alert["subject"]
    assert (
        f"Locked: {n_lock}\n" in alert["message"] and f"Dropped (DROP ROLE): {n_drop}\n" in alert["message"]
    )
    assert (
        f"... and {n_lock - MAX_NAMES_IN_XCOM} more not listed here: action_history lists them"
        in (alert["message"])
    )


@pytest.mark.single_pg_version("the log export is AWS's setting, not PostgreSQL's")
def test_preflight_fails_clearly_when_the_log_export_is_off(
    scenario: Scenario, dag_harness: DagHarness
) -> None:
    sc, h = scenario, dag_harness
    h.create_aurora("no-export", exports=["upgrade"])
    h.write_config(cluster_id="no-export")
    states = h.run(dag_id="inactive_users__no_export")
    assert states["preflight"] == "failed"
    assert states["sync_roles"] == "upstream_failed" and states["lock_users"] == "upstream_failed"
    assert states["report"] == "failed"  # the run is red
    [alert] = h.messages()  # one alert: the failing task's; report does not repeat it
    assert alert["subject"] == "[inactive_users] FAILED no-export: task preflight"
    assert "does not export its PostgreSQL log to CloudWatch Logs" in alert["message"]
    assert "--cloudwatch-logs-export-configuration" in alert["message"]
    # the failure callback says what it knows of the exposure, and creates no state schema to say it
    assert "Exposure: unknown: no state schema 'inactive_users' on the cluster yet" in alert["message"]
    assert sc.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'inactive_users'") == [(0,)]


def test_preflight_fails_clearly_when_log_connections_is_off(
    scenario: Scenario, dag_harness: DagHarness
) -> None:
    sc, h = scenario, dag_harness
    sc.sql("ALTER SYSTEM SET log_connections = off")
    sc.pg.reload()
    states = h.run()
    assert states["preflight"] == "failed" and states["report"] == "failed"
    [alert] = h.messages()
    assert "log_connections is 'off'" in alert["message"]
    assert "Exposure: unknown: no state schema" in alert["message"]
    assert "parameter group" in alert["message"]
    assert sc.pg.password not in alert["message"]


@pytest.mark.single_pg_version(
    "the subject is a killed task and the next run; ALTER ROLE's transaction is the same on every version"
)
def test_sigkill_during_lock_users_then_a_new_run_converges(
    scenario: Scenario, dag_harness: DagHarness
) -> None:
    """The whole `airflow dags test` process is killed while lock_users is half done."""
    import signal
    import subprocess
    import sys
    import time

    import psycopg

    sc, h = scenario, dag_harness
    for name in ("idle1", "idle2", "fresh"):
        sc.create_role(name)
    h.write_config(lease_hours=0.001)  # a dead run's lease lapses after 3.6 s
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    for name, days in {"idle1": 100, "idle2": 100, "fresh": 1}.items():
        sc.set_last_login(name, days)
    sc.ship(sc.writer)
    assert sc.login("fresh")
    sc.ship(sc.reader)
    airflow = str(Path(sys.executable).parent / "airflow")
    # a batch's ALTER ROLE statements run inside one DO block: that is the query the server shows
    batch = "DO $inactive_users$"
    assert actions._EACH_SQL.startswith(batch)
    with psycopg.connect(sc.pg.dsn()) as blocker:
        blocker.execute("ALTER ROLE idle2 CONNECTION LIMIT 7")  # lock_users will wait on idle2
        proc = subprocess.Popen(
            [airflow, "dags", "test", "inactive_users__test_aurora"],
            env=os.environ.copy(),
            stdout=(h.config_path.parent / "killed-run.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while not sc.sql(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND starts_with(query, %s)", batch
        ):
            log = (h.config_path.parent / "killed-run.log").read_text()
            errors = [line for line in log.splitlines() if "rror" in line][:20]
            assert proc.poll() is None, "airflow dags test ended before lock_users blocked:\n" + "\n".join(
                errors
            )
            assert time.monotonic() < deadline, "lock_users never started"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        blocker.rollback()
    # the orphaned backend finds its client gone and rolls back: idle1 was not left half-locked
    deadline = time.monotonic() + 30
    while sc.sql(
        "SELECT 1 FROM pg_stat_activity WHERE starts_with(query, %s) AND pid <> pg_backend_pid()", batch
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert sc.role("idle1")["can_login"] is True  # type: ignore[index]
    assert sc.history("lock") == []
    time.sleep(4)  # the killed run's lease lapses
    states = h.run()
    assert states["lock_users"] == "success" and states["report"] == "success", states
    st = sc.statuses()
    assert st["idle1"]["status"] == st["idle2"]["status"] == "Locked" and st["fresh"]["status"] == "Active"
    assert sorted(x[1] for x in sc.history("lock")) == ["idle1", "idle2"]
    assert sc.role("idle2")["conn_limit"] == -1  # type: ignore[index]  # the blocker's change was rolled back
