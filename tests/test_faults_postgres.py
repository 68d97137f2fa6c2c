"""Postgres faults mid-step: the job's backend is terminated while it works, or the server restarts.

The engine is paused at a known point by a real lock another session holds, then its backend is
terminated from a third session (``pg_terminate_backend``). Afterwards the role attributes, status
rows and history must agree, and re-running converges to the fault-free result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from tests.scenario import Scenario


def terminate_when_blocked(sc: Scenario, step: Callable[[], object], hold: list[str]) -> BaseException | None:
    """Run ``step`` while another session holds locks (``hold``), kill the job's backend once it waits."""
    error: list[BaseException] = []

    def run() -> None:
        try:
            step()
        except BaseException as exc:
            error.append(exc)

    with psycopg.connect(sc.pg.dsn()) as blocker:  # not autocommit: holds its locks until rollback
        for statement in hold:
            blocker.execute(statement)  # type: ignore[arg-type]
        blocker_pid = blocker.info.backend_pid
        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 30
        while True:
            waiting = sc.sql(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> %s "
                "AND backend_type = 'client backend'",
                blocker_pid,
            )
            if waiting:
                break
            assert worker.is_alive(), f"the step finished without waiting on the held lock: {error}"
            assert time.monotonic() < deadline, "the step never blocked"
            time.sleep(0.02)
        assert sc.sql("SELECT pg_terminate_backend(%s)", waiting[0][0]) == [(True,)]
        worker.join(timeout=30)
        blocker.rollback()
    return error[0] if error else None


def assert_consistent(sc: Scenario) -> None:
    """Every role's attributes agree with its status row and its history."""
    st = sc.statuses()
    last_action: dict[str, str] = {}
    for action, user, _ in sc.history():
        if action in ("lock", "unlock", "drop", "ready_to_delete"):
            last_action[user] = action
    for name, row in st.items():
        role = sc.role(name)
        assert role is not None, f"{name} has a status row but no role"
        locked = row["status"] in ("Locked", "ReadyToDelete")
        assert role["can_login"] is not locked, (
            f"{name}: status {row['status']} but can_login={role['can_login']}"
        )
        assert (last_action.get(name) in ("lock", "ready_to_delete")) is locked, f"{name}: history disagrees"
    for name, action in last_action.items():
        if action == "drop":
            assert sc.role(name) is None and name not in st


def story(sc: Scenario) -> None:
    for name in ("idle1", "idle2", "old1", "old2", "fresh"):
        sc.create_role(name)
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    for name, days in {"idle1": 100, "idle2": 100, "old1": 200, "old2": 200, "fresh": 1}.items():
        sc.set_last_login(name, days)
    sc.ship()


def assert_fault_free_result(sc: Scenario) -> None:
    st = sc.statuses()
    assert {n: s["status"] for n, s in st.items()} == {
        "idle1": "Locked",
        "idle2": "Locked",
        "fresh": "Active",
    }
    assert sc.role("old1") is None and sc.role("old2") is None
    assert sorted(h[1] for h in sc.history("lock")) == ["idle1", "idle2"]
    assert sorted(h[1] for h in sc.history("drop")) == ["old1", "old2"]
    assert_consistent(sc)


def test_killed_during_lock_users(scenario: Scenario) -> None:
    sc = scenario
    story(sc)
    eng = sc.engine()
    plan = eng.plan()
    err = terminate_when_blocked(sc, lambda: eng.lock(plan), ["ALTER ROLE idle2 CONNECTION LIMIT 7"])
    assert isinstance(err, psycopg.OperationalError)
    assert sc.role("idle1")["can_login"] is True  # type: ignore[index]  # its ALTER was rolled back
    assert sc.history("lock") == []
    assert_consistent(sc)
    sc.engine().run([sc.writer])  # the retried run
    assert_fault_free_result(sc)


def test_killed_during_delete_users(scenario: Scenario) -> None:
    sc = scenario
    story(sc)
    eng = sc.engine()
    plan = eng.plan()
    err = terminate_when_blocked(sc, lambda: eng.delete(plan), ["ALTER ROLE old2 CONNECTION LIMIT 7"])
    assert isinstance(err, psycopg.OperationalError)
    assert sc.role("old1") is not None and sc.history("drop") == []
    assert_consistent(sc)
    sc.engine().run([sc.writer])
    assert_fault_free_result(sc)


def test_killed_during_sync_roles(scenario: Scenario) -> None:
    sc = scenario
    story(sc)
    sc.create_role("newcomer")
    before = sc.statuses()
    eng = sc.engine()
    err = terminate_when_blocked(
        sc, eng.sync_roles, ["LOCK TABLE inactive_users.action_history IN EXCLUSIVE MODE"]
    )
    assert isinstance(err, psycopg.OperationalError)
    assert sc.statuses() == before  # the half-done sync left nothing behind
    sc.engine().run([sc.writer])
    assert sc.statuses()["newcomer"]["status"] == "Active"
    assert sc.history("sync_add")[-1][1] == "newcomer"
    assert len([h for h in sc.history("sync_add") if h[1] == "newcomer"]) == 1


def test_killed_during_ingest_logins(scenario: Scenario) -> None:
    sc = scenario
    story(sc)
    assert sc.login("idle1")
    sc.ship()
    before = sc.statuses()
    eng = sc.engine()
    err = terminate_when_blocked(
        sc,
        lambda: eng.ingest([sc.writer]),
        ["LOCK TABLE inactive_users.user_login_job_status IN EXCLUSIVE MODE"],
    )
    assert isinstance(err, psycopg.OperationalError)
    assert sc.statuses() == before  # logins and watermark move together or not at all
    assert sc.sql("SELECT count(*) FROM inactive_users.user_login_job_status") == [(0,)]
    report = sc.engine().run([sc.writer])
    assert report.lock.names("locked") == ["idle2"]  # idle1 logged in: its retry still counts it


@pytest.mark.parametrize("restart_after", ["sync", "ingest", "lock"])
def test_server_restart_between_steps(scenario: Scenario, restart_after: str) -> None:
    sc = scenario
    story(sc)
    eng = sc.engine()
    steps: list[tuple[str, Callable[[], object]]] = [
        ("sync", eng.sync_roles),
        ("ingest", lambda: eng.ingest([sc.writer])),
        ("lock", lambda: eng.lock(eng.plan([sc.writer]))),
        ("delete", lambda: eng.delete(eng.plan([sc.writer]))),
    ]
    for name, step in steps:
        step()
        if name == restart_after:
            sc.pg.restart()
            sc.reconnect()
    assert_fault_free_result(sc)
