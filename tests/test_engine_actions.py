"""Lock, unlock, drop / ReadyToDelete, dry run and the guards, on a real cluster."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from inactive_users.engine import SafetyGuardError
from inactive_users.postgres.migrations import lock_key
from inactive_users.postgres.state import ConcurrentRunError
from tests.scenario import ROLE_PASSWORD, Scenario

WEIRD = 'We"ird Name 👀'


def prepared(sc: Scenario, ages: dict[str, float], **settings: object):  # type: ignore[no-untyped-def]
    """Roles synced with seeded last logins (days ago), and a log stream with a fresh login in it."""
    eng = sc.engine(**settings)
    eng.migrate()
    eng.sync_roles()
    for name, days in ages.items():
        sc.set_last_login(name, days)
    sc.ship()  # the job's own logins show the log export works
    return eng


@pytest.mark.parametrize("method", ["nologin", "connection_limit"])
def test_lock_then_unlock_restores_the_exact_prior_attributes(scenario: Scenario, method: str) -> None:
    sc = scenario
    sc.create_role("capped", "LOGIN CONNECTION LIMIT 5")
    sc.create_role("plain")
    sc.create_role("fresh")
    eng = prepared(sc, {"capped": 95, "plain": 120, "fresh": 3}, lock_method=method)
    before = {n: sc.role(n) for n in ("capped", "plain")}

    report = eng.run([sc.writer])
    assert report.lock.names("locked") == ["capped", "plain"]
    for name in ("capped", "plain"):
        attrs = sc.role(name)
        assert attrs is not None
        if method == "nologin":
            assert attrs["can_login"] is False and attrs["conn_limit"] == before[name]["conn_limit"]  # type: ignore[index]
        else:
            assert attrs["can_login"] is True and attrs["conn_limit"] == 0
        assert not sc.login(name)
        st = sc.statuses()[name]
        assert st["status"] == "Locked"
        assert (st["prior_can_login"], st["prior_conn_limit"]) == (True, before[name]["conn_limit"])  # type: ignore[index]
    assert sc.statuses()["fresh"]["status"] == "Active"
    assert [h[1] for h in sc.history("lock")] == ["capped", "plain"]

    unlocked = sc.engine(run_id="unlock-run").unlock(["capped", "plain", "fresh", "nobody"])
    assert unlocked.names("unlocked") == ["capped", "plain"]
    assert unlocked.names("skipped") == ["fresh"]
    assert unlocked.names("failed") == ["nobody"]
    for name in ("capped", "plain"):
        assert sc.role(name) == before[name]
        st = sc.statuses()[name]
        assert st["status"] == "Active" and st["prior_conn_limit"] is None
        assert sc.sql("SELECT now() - %s < interval '1 minute'", st["last_login"]) == [(True,)]
        assert sc.login(name)
    assert [h[:2] for h in sc.history("unlock")] == [("unlock", "capped"), ("unlock", "plain")]
    assert {h[2] for h in sc.history("unlock")} == {"unlock-run"}


def test_a_role_with_an_open_session_is_never_locked(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("busy")
    eng = prepared(sc, {"busy": 100})
    plan = eng.plan()
    assert [p.name for p in plan.lock] == ["busy"]
    sc.hold_session("busy")  # it connects between the plan and the action
    report = eng.lock(plan)
    assert report.by_action("skipped")[0].reason == "has a session open now"
    assert sc.role("busy")["can_login"] is True  # type: ignore[index]
    assert sc.statuses()["busy"]["status"] == "Active"


def test_drop_role_without_dependencies(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("gone_soon")
    sc.create_role("member_only")
    sc.create_role("grp", "NOLOGIN")
    sc.sql("GRANT grp TO member_only")  # a membership is not a dependency: DROP ROLE removes it
    eng = prepared(sc, {"gone_soon": 200, "member_only": 365})
    report = eng.run([sc.writer])
    assert sorted(report.delete.names("dropped")) == ["gone_soon", "member_only"]
    assert sc.role("gone_soon") is None and sc.role("member_only") is None
    assert "gone_soon" not in sc.statuses()
    assert sorted(h[1] for h in sc.history("drop")) == ["gone_soon", "member_only"]
    # the next sync finds nothing to remove: the status row went with the role
    assert eng.sync_roles().removed == []


def test_owner_of_a_table_in_another_database_is_flagged_not_dropped(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("owner2")
    sc.sql("CREATE DATABASE app2")
    sc.sql("CREATE TABLE owned (id int)", dbname="app2")
    sc.sql("ALTER TABLE owned OWNER TO owner2", dbname="app2")
    eng = prepared(sc, {"owner2": 200})

    report = eng.run([sc.writer])
    outcome = report.delete.by_action("ready_to_delete")[0]
    assert outcome.name == "owner2"
    assert outcome.blockers == "database app2: owns table public.owned"
    st = sc.statuses()["owner2"]
    assert st["status"] == "ReadyToDelete"
    assert st["reason"].endswith("; blocked by: database app2: owns table public.owned")
    assert sc.role("owner2")["can_login"] is False  # type: ignore[index]  # locked while it waits
    assert sc.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'owned'", dbname="app2") == [(1,)]
    assert [h[1] for h in sc.history("ready_to_delete")] == ["owner2"]

    # next run: still blocked, no new history row; once the DBA handles the table, it is dropped
    again = sc.engine().run([sc.writer])
    assert again.delete.names("still_ready_to_delete") == ["owner2"]
    assert len(sc.history("ready_to_delete")) == 1
    sc.sql("DROP TABLE owned", dbname="app2")
    final = sc.engine().run([sc.writer])
    assert final.delete.names("dropped") == ["owner2"]
    assert sc.role("owner2") is None


def test_role_holding_only_a_privilege_is_flagged(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("reader")
    sc.sql("CREATE TABLE shared_data (id int)")
    sc.sql("GRANT SELECT ON shared_data TO reader")
    eng = prepared(sc, {"reader": 181})
    report = eng.run([sc.writer])
    assert report.delete.by_action("ready_to_delete")[0].blockers == (
        "database postgres: holds privileges on table public.shared_data"
    )
    assert sc.statuses()["reader"]["status"] == "ReadyToDelete"
    assert sc.role("reader") is not None


def test_dry_run_changes_nothing_even_on_a_fresh_cluster(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("idle")
    sc.create_role("old")
    sc.create_role("fresh")
    sc.ship()
    before = sc.snapshot()
    report = sc.engine(dry_run=True).run([sc.writer])  # never migrated: the schema is rolled back too
    assert report.dry_run and sorted(report.sync.added) == ["fresh", "idle", "old"]  # type: ignore[union-attr]
    assert sc.snapshot() == before
    assert before["schema"] == [(0,)]

    eng = prepared(sc, {"idle": 100, "old": 200, "fresh": 1})
    sc.sql("CREATE TABLE t_old (id int)")
    sc.sql("ALTER TABLE t_old OWNER TO old")
    before = sc.snapshot()
    report = sc.engine(dry_run=True).run([sc.writer], unlock_users=["idle"])
    assert report.lock.names("would_lock") == ["idle"]
    assert report.delete.by_action("would_flag_ready_to_delete")[0].blockers == (
        "database postgres: owns table public.t_old"
    )
    assert report.unlock.names("would_unlock") == ["idle"]
    assert sc.snapshot() == before
    # a future evaluation time is a preview of what would happen then
    future = sc.sql("SELECT now() + interval '90 days'")[0][0]
    report = sc.engine(dry_run=True).run([sc.writer], as_of=future)
    assert report.lock.names("would_lock") == ["fresh"]  # 91 days by then
    assert report.delete.names("would_drop") == ["idle"]  # 190 days by then
    assert sc.snapshot() == before
    del eng


def test_as_of_requires_dry_run(scenario: Scenario) -> None:
    from inactive_users.core.settings import SettingsError

    with pytest.raises(SettingsError, match="only with dry_run"):
        scenario.engine().run([scenario.writer], as_of=scenario.sql("SELECT now()")[0][0])


def test_safety_guard_trips_then_can_be_overridden(scenario: Scenario) -> None:
    sc = scenario
    names = [f"u{i}" for i in range(8)]
    for name in names:
        sc.create_role(name)
    ages = {n: (100 if i < 3 else 1) for i, n in enumerate(names)}  # 3 of 8 = 37.5%
    prepared(sc, ages)
    with pytest.raises(SafetyGuardError, match=r"lock or delete 3 of 8 candidate roles \(38%\)"):
        sc.engine(max_action_ratio=0.25).run([sc.writer])
    assert all(sc.role(n)["can_login"] for n in names)  # type: ignore[index]
    assert sc.history("lock") == []
    report = sc.engine(max_action_ratio=0.25, override_guard=True).run([sc.writer])
    assert report.lock.names("locked") == ["u0", "u1", "u2"]


def test_one_role_failing_does_not_stop_the_others(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("job", "LOGIN CREATEROLE")
    sc.sql("GRANT CREATE ON DATABASE postgres TO job")
    with psycopg.connect(sc.pg.dsn(user="job", password=ROLE_PASSWORD), autocommit=True) as job:
        for name in ("a_user", "c_user"):  # created by the job user: it administers them (PG 16+)
            sc.create_role(name, via=job)
    sc.create_role("b_super", "LOGIN SUPERUSER")  # the job user may not alter a superuser
    sc.use_job_user("job", ROLE_PASSWORD)
    eng = prepared(sc, {"a_user": 100, "b_super": 100, "c_user": 100}, include_superusers=True)
    report = eng.lock(eng.plan())
    assert report.names("locked") == ["a_user", "c_user"]
    failed = report.failures
    assert [f.name for f in failed] == ["b_super"]
    assert failed[0].reason.startswith("42501")  # insufficient_privilege, named in the report
    assert sc.statuses()["b_super"]["status"] == "Active"
    assert sc.role("b_super")["can_login"] is True  # type: ignore[index]
    assert [h[1] for h in sc.history("lock_failed")] == ["b_super"]


def test_one_role_failing_does_not_stop_the_others_in_unlock_and_delete(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("job", "LOGIN CREATEROLE")
    with psycopg.connect(sc.pg.dsn(user="job", password=ROLE_PASSWORD), autocommit=True) as job:
        for name in ("a_user", "c_user", "e_owner"):  # created by the job user: it administers them
            sc.create_role(name, via=job)
    sc.create_role("b_super", "LOGIN SUPERUSER")
    sc.create_role("d_super", "LOGIN SUPERUSER")
    for table, owner in (("owned_d", "d_super"), ("owned_e", "e_owner")):
        sc.sql(f"CREATE TABLE {table} (id int)")
        sc.sql(f"ALTER TABLE {table} OWNER TO {owner}")
    prepared(sc, {"a_user": 100, "b_super": 100, "c_user": 100}, include_superusers=True)
    assert sc.engine(include_superusers=True).run([sc.writer]).lock.names("locked") == [
        "a_user",
        "b_super",
        "c_user",
    ]

    for grant in (
        "GRANT USAGE ON SCHEMA inactive_users TO job",
        "GRANT ALL ON ALL TABLES IN SCHEMA inactive_users TO job",
        "GRANT ALL ON ALL SEQUENCES IN SCHEMA inactive_users TO job",
    ):
        sc.sql(grant)
    sc.use_job_user("job", ROLE_PASSWORD)  # from now on the job user may not alter or drop a superuser
    eng = sc.engine(include_superusers=True)
    unlocked = eng.unlock(["a_user", "b_super", "c_user"])
    assert unlocked.names("unlocked") == ["a_user", "c_user"]
    assert [(o.name, o.reason[:5]) for o in unlocked.failures] == [("b_super", "42501")]
    assert sc.role("b_super")["can_login"] is False  # type: ignore[index]
    assert sc.statuses()["b_super"]["status"] == "Locked"
    assert sc.role("a_user")["can_login"] is True  # type: ignore[index]
    assert [h[1] for h in sc.history("unlock_failed")] == ["b_super"]

    for name in ("a_user", "b_super", "c_user", "d_super", "e_owner"):
        sc.set_last_login(name, 200)
    report = eng.delete(eng.plan())
    assert [(o.name, o.action) for o in report.outcomes] == [
        ("a_user", "dropped"),
        ("b_super", "failed"),  # cannot be dropped by the job user
        ("c_user", "dropped"),
        ("d_super", "failed"),  # blocked, and cannot be locked by the job user
        ("e_owner", "ready_to_delete"),
    ]
    assert all(o.reason.startswith("42501: ") for o in report.failures)
    assert report.by_action("failed")[1].blockers == "database postgres: owns table public.owned_d"
    assert sc.role("a_user") is None and sc.role("c_user") is None
    statuses = sc.statuses()
    assert {n: s["status"] for n, s in statuses.items() if n != "job"} == {
        "b_super": "Locked",
        "d_super": "Active",
        "e_owner": "ReadyToDelete",
    }
    assert sc.role("d_super")["can_login"] is True  # type: ignore[index]
    assert sc.role("e_owner")["can_login"] is False  # type: ignore[index]
    assert (statuses["e_owner"]["prior_can_login"], statuses["e_owner"]["prior_conn_limit"]) == (True, -1)
    delete_history = [
        h[:2] for h in sc.history() if h[0] in ("drop", "drop_failed", "flag_failed", "ready_to_delete")
    ]
    assert delete_history == [
        ("drop", "a_user"),
        ("drop_failed", "b_super"),
        ("drop", "c_user"),
        ("flag_failed", "d_super"),
        ("ready_to_delete", "e_owner"),
    ]


def test_a_dependency_appearing_meanwhile_flags_the_role_instead(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("late_owner")
    sc.create_role("gone_soon")
    sc.sql("CREATE TABLE late (id int)")
    eng = prepared(sc, {"late_owner": 200, "gone_soon": 200})
    plan = eng.plan()
    reports = []
    with psycopg.connect(sc.pg.dsn()) as other:  # not autocommit: the grant commits when we say
        other.execute("GRANT SELECT ON late TO late_owner")  # locks the role against DROP ROLE
        worker = threading.Thread(target=lambda: reports.append(eng.delete(plan)))
        worker.start()
        deadline = time.monotonic() + 30
        while not sc.sql(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> %s",
            other.info.backend_pid,
        ):  # the job checked dependencies (none yet) and now waits to drop the role
            assert worker.is_alive() and time.monotonic() < deadline, "the delete step never blocked"
            time.sleep(0.02)
        other.commit()
        worker.join(timeout=30)
    report = reports[0]
    assert report.names("dropped") == ["gone_soon"]
    flagged = report.by_action("ready_to_delete")
    assert [o.name for o in flagged] == ["late_owner"]
    assert flagged[0].blockers is not None
    assert flagged[0].blockers.startswith('2BP01: role "late_owner" cannot be dropped')
    assert flagged[0].blockers.endswith("(privileges for table late)")
    assert sc.statuses()["late_owner"]["status"] == "ReadyToDelete"
    assert sc.role("late_owner")["can_login"] is False  # type: ignore[index]
    assert [h[:2] for h in sc.history() if h[0] in ("drop", "ready_to_delete")] == [
        ("drop", "gone_soon"),
        ("ready_to_delete", "late_owner"),
    ]


def test_two_runs_cannot_act_at_once(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("idle")
    eng = prepared(sc, {"idle": 100})
    plan = eng.plan()
    with psycopg.connect(sc.pg.dsn()) as other:  # another run is in the middle of acting
        other.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key("inactive_users", "act")])
        with pytest.raises(ConcurrentRunError, match="another inactive_users run"):
            eng.lock(plan)
        with pytest.raises(ConcurrentRunError):
            eng.sync_roles()
    assert sc.role("idle")["can_login"] is True  # type: ignore[index]
    assert eng.lock(plan).names("locked") == ["idle"]  # once the other run is done
    assert sc.engine().lock(plan).names("skipped") == ["idle"]  # a stale plan does nothing twice
    assert len(sc.history("lock")) == 1


def test_weird_role_name_full_cycle(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role(WEIRD)
    eng = prepared(sc, {WEIRD: 100})
    assert eng.run([sc.writer]).lock.names("locked") == [WEIRD]
    assert not sc.login(WEIRD)  # the locked user retries; it must not reset its own clock
    sc.ship()
    eng.run([sc.writer])
    assert sc.statuses()[WEIRD]["status"] == "Locked"
    assert eng.unlock([WEIRD]).names("unlocked") == [WEIRD]
    assert sc.login(WEIRD)
    sc.set_last_login(WEIRD, 250)
    assert sc.engine().run([sc.writer]).delete.names("dropped") == [WEIRD]
    assert sc.role(WEIRD) is None
    assert [h[0] for h in sc.history() if h[1] == WEIRD] == ["sync_add", "lock", "unlock", "drop"]


def test_history_records_who_what_when_why(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("idle")
    prepared(sc, {"idle": 100})
    sc.engine(run_id="scheduled__2026-11-26").run([sc.writer])
    row = sc.sql(
        "SELECT run_id, actor, action, user_name, role_oid IS NOT NULL, reason, detail->>'method', "
        "now() - at < interval '1 minute' FROM inactive_users.action_history WHERE action = 'lock'"
    )
    assert row == [
        ("scheduled__2026-11-26", "postgres", "lock", "idle", True, row[0][5], "nologin", True),
    ]
    assert row[0][5].startswith("inactive 100 days (last login ")
