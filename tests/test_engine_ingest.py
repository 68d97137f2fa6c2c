"""Login ingestion: real connections, real log lines, shipped to the moto CloudWatch endpoint."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import psycopg
import pytest

from inactive_users.aws.cloudwatch import LogSourceError
from inactive_users.engine import SafetyGuardError
from inactive_users.postgres import state
from tests.scenario import ROLE_PASSWORD, Scenario

WEIRD = 'We"ird Name 👀'


def recent(ts: datetime, now: datetime, within: timedelta = timedelta(minutes=2)) -> bool:
    return abs(now - ts) < within


def db_now(sc: Scenario) -> datetime:
    return sc.sql("SELECT now()")[0][0]  # type: ignore[no-any-return]


def test_real_logins_count_and_locked_roles_retrying_do_not(scenario: Scenario) -> None:
    sc = scenario
    for name in ["alice", WEIRD, "bob", "locked_nl", "locked_cl"]:
        sc.create_role(name)
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    seeded = {name: sc.set_last_login(name, 50) for name in ["alice", WEIRD, "bob"]}
    seeded["locked_nl"] = sc.set_last_login("locked_nl", 100)
    seeded["locked_cl"] = sc.set_last_login("locked_cl", 100)
    plan = eng.plan()
    assert sc.engine(lock_method="nologin").lock(plan).names("locked") == ["locked_cl", "locked_nl"]
    # re-lock one of them the other way to cover both methods: unlock, reseed, lock by connection limit
    eng.unlock(["locked_cl"])
    seeded["locked_cl"] = sc.set_last_login("locked_cl", 100)
    assert sc.engine(lock_method="connection_limit").lock(eng.plan()).names("locked") == ["locked_cl"]

    assert sc.login("alice")
    assert sc.login(WEIRD)
    assert not sc.login("bob", password="wrong")
    assert not sc.login("locked_nl")  # authorized, then "not permitted to log in"
    assert not sc.login("locked_cl")  # authorized, then "too many connections for role"
    assert sc.ship() > 0

    result = eng.ingest([sc.writer])
    now = db_now(sc)
    st = sc.statuses()
    assert recent(st["alice"]["last_login"], now)
    assert recent(st[WEIRD]["last_login"], now)
    for name in ["bob", "locked_nl", "locked_cl"]:
        assert st[name]["last_login"] == seeded[name], name
    assert result.rejected == {"locked_nl": 1, "locked_cl": 1}
    assert result.failed_auth == {"bob": 1}
    assert result.rows_advanced == 2
    # no login is credited to a role that does not exist or to the job's own user
    assert set(st) == {"alice", WEIRD, "bob", "locked_nl", "locked_cl"}


def test_applying_the_same_events_twice_changes_nothing(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("alice")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("alice", 10)
    assert sc.login("alice")
    sc.ship()
    first = eng.ingest([sc.writer])
    after_first = sc.statuses()
    second = eng.ingest([sc.writer])  # re-reads the overlap window: the same events again
    assert first.rows_advanced == 1
    assert second.rows_advanced == 0
    assert second.users_seen == first.users_seen == 2  # alice and the job user itself
    assert sc.statuses() == after_first


def test_late_event_inside_the_overlap_window_counts(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("alice")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("alice", 10)
    sc.ensure_stream(sc.writer)
    sc.ship()
    assert sc.login("alice")
    sc.flush_log()
    time.sleep(1.1)  # the login's %t second is now in the past
    eng.ingest([sc.writer])  # CloudWatch has not delivered the line yet
    assert sc.statuses()["alice"]["last_login"] < db_now(sc) - timedelta(days=9)

    sc.ship()  # delivered late, timestamped before the watermark
    eng.ingest([sc.writer])
    assert recent(sc.statuses()["alice"]["last_login"], db_now(sc))


def test_late_event_outside_the_overlap_window_is_missed(scenario: Scenario) -> None:
    """The converse, so the window is shown to matter (documented limitation)."""
    sc = scenario
    sc.create_role("alice")
    eng = sc.engine(overlap_minutes=0.01)
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("alice", 10)
    sc.ensure_stream(sc.writer)
    assert sc.login("alice")
    sc.flush_log()
    time.sleep(1.1)
    eng.ingest([sc.writer])
    time.sleep(1.1)
    eng.ingest([sc.writer])  # the watermark moves past the login by more than the overlap
    sc.ship()
    eng.ingest([sc.writer])
    assert sc.statuses()["alice"]["last_login"] < db_now(sc) - timedelta(days=9)


def test_first_run_reads_the_lookback_then_each_instance_has_its_own_watermark(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("alice")
    sc.create_role("bob")
    eng = sc.engine(lookback_hours=6)
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("alice", 30)
    sc.set_last_login("bob", 30)
    assert sc.login("alice")
    sc.ship(sc.writer)
    assert sc.login("bob")
    sc.ship(sc.reader)  # bob's login happened on the second instance

    result = eng.ingest([sc.writer, sc.reader])
    start = datetime.fromisoformat(str(result.instances[sc.writer]["from"]))
    end = datetime.fromisoformat(str(result.instances[sc.writer]["to"]))
    assert end - start == timedelta(hours=6)
    assert result.instances[sc.writer]["users"] >= 1 and result.instances[sc.reader]["users"] >= 1
    now = db_now(sc)
    st = sc.statuses()
    assert recent(st["alice"]["last_login"], now) and recent(st["bob"]["last_login"], now)

    marks = sc.sql(
        "SELECT instance_name, last_processed_time FROM inactive_users.user_login_job_status ORDER BY 1"
    )
    assert [m[0] for m in marks] == [sc.writer, sc.reader]
    result = eng.ingest([sc.writer, sc.reader])
    second_start = datetime.fromisoformat(str(result.instances[sc.reader]["from"]))
    assert second_start == marks[1][1] - timedelta(minutes=15)  # the overlap, from the watermark


def test_open_sessions_count_as_activity_now(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("pooled")
    sc.create_role("idle")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("pooled", 100)
    sc.set_last_login("idle", 100)
    sc.hold_session("pooled")  # a long-lived pooled connection: it logged in long ago
    sc.skip_log()  # its login line is not exported; only the open session tells
    sc.ensure_stream(sc.writer)
    result = eng.ingest([sc.writer])
    assert result.active_sessions == ["pooled"]
    assert recent(sc.statuses()["pooled"]["last_login"], db_now(sc))
    plan = eng.plan()
    assert [p.name for p in plan.lock] == ["idle"]


def test_missing_log_group_says_what_to_fix(scenario: Scenario) -> None:
    sc = scenario
    eng = sc.engine()
    eng.migrate()
    with pytest.raises(LogSourceError, match="EnableCloudwatchLogsExports") as err:
        eng.ingest([sc.writer])
    assert "/aws/rds/cluster/test-aurora/postgresql" in str(err.value)
    assert sc.sql("SELECT count(*) FROM inactive_users.user_login_job_status") == [(0,)]


def test_instance_without_connection_events_blocks_all_actions(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("alice")
    sc.create_role("stale")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("stale", 100)
    assert sc.login("alice")
    sc.ship(sc.writer)
    sc.ensure_stream(sc.reader)  # the reader exports nothing: log_connections off there?
    with pytest.raises(SafetyGuardError, match="log_connections") as err:
        sc.engine().run([sc.writer, sc.reader])
    assert f"{sc.reader}: no connection events found at all" in str(err.value)
    assert sc.writer not in str(err.value).split("on ", 1)[1]
    assert sc.role("stale")["can_login"] is True  # type: ignore[index]
    assert sc.history("lock") == []


def test_every_page_is_read_with_the_server_side_filters(scenario: Scenario) -> None:
    from inactive_users.aws.cloudwatch import CloudWatchLogins

    sc = scenario
    names = [f"p{i}" for i in range(7)]
    for name in names:
        sc.create_role(name)
    eng = sc.engine(page_size=2)
    eng.migrate()
    eng.sync_roles()
    for name in names:
        sc.set_last_login(name, 20)
        assert sc.login(name)
    assert not sc.login("p0", password="wrong")
    sc.ship()

    source = eng.logs
    assert isinstance(source, CloudWatchLogins)
    result = eng.ingest([sc.writer])
    assert result.rows_advanced == 7
    # logins: (7 roles + the job's own) / 2 per page; FATAL: 1 event; each query ends on a last page
    assert source.stats.requests >= 5
    total_lines = len(sc.pg.log_lines())
    assert source.stats.events < total_lines  # only connection and FATAL lines travelled


@pytest.mark.parametrize("temp_allowed", [True, False], ids=["copy-to-temp-table", "no-temp-privilege"])
def test_apply_logins_moves_times_only_forward_with_or_without_temp_tables(
    scenario: Scenario, temp_allowed: bool
) -> None:
    """Both ways of sending the logins (COPY to a temp table, binary arrays) write the same rows."""
    sc = scenario
    names = ["alice", WEIRD, "bob", "carol"]
    for name in names:
        sc.create_role(name)
    sc.create_role("job", "LOGIN")
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    sc.sql("GRANT USAGE ON SCHEMA inactive_users TO job")
    sc.sql("GRANT SELECT, UPDATE ON inactive_users.user_login_status TO job")
    if not temp_allowed:
        sc.sql("REVOKE TEMPORARY ON DATABASE postgres FROM PUBLIC")
    seeded = {name: sc.set_last_login(name, 10) for name in names}
    state.end_first_ingest(sc.admin, "inactive_users")  # past their first ingest: GREATEST from now on
    later = db_now(sc) + timedelta(hours=1)

    with psycopg.connect(sc.pg.dsn(user="job", password=ROLE_PASSWORD), autocommit=True) as conn:
        has_temp = conn.execute("SELECT has_database_privilege(current_database(), 'TEMPORARY')").fetchone()
        assert has_temp == (temp_allowed,)
        with conn.transaction():  # as ingest calls it; twice in one transaction works too
            moved = state.apply_logins(
                conn,
                "inactive_users",
                {"alice": later, WEIRD: later, "bob": seeded["bob"] - timedelta(days=1), "ghost": later},
            )
            assert moved == 2  # bob's time is older than the stored one; ghost is not tracked
            assert state.apply_logins(conn, "inactive_users", {"alice": later, "carol": later}) == 1
        assert state.apply_logins(conn, "inactive_users", {}) == 0
        # outside a transaction (autocommit) it is still one atomic change
        assert state.apply_logins(conn, "inactive_users", {"bob": later + timedelta(seconds=1)}) == 1
        leftovers = conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'inactive_users_logins'")
        assert leftovers.fetchone() == (0,)

    st = sc.statuses()
    assert {n: st[n]["last_login"] for n in names} == {
        "alice": later,
        WEIRD: later,
        "bob": later + timedelta(seconds=1),
        "carol": later,
    }
    assert "ghost" not in st
