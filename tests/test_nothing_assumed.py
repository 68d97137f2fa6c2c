"""Nothing lost, nothing assumed: the first-run rule, logins still settling, the retention guard.

Each of these failed on the version before them: the first run gave every role now(), a login
seconds old could be locked, and an instance read after its log group's retention lost logins
silently.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

from inactive_users.engine import SafetyGuardError
from tests.scenario import Scenario


def db_now(sc: Scenario) -> datetime:
    return sc.sql("SELECT now()")[0][0]  # type: ignore[no-any-return]


def group(sc: Scenario) -> str:
    return f"/aws/rds/cluster/{sc.cluster_id}/postgresql"


def test_first_run_takes_the_last_login_the_lookback_window_shows(scenario: Scenario) -> None:
    sc = scenario
    for name in ["seen", "never"]:
        sc.create_role(name)
    before = db_now(sc)
    assert sc.login("seen")
    after = db_now(sc)
    sc.ship()
    time.sleep(1.5)  # the first sync happens later than the login
    eng = sc.engine()
    eng.run([sc.writer])
    st = sc.statuses()
    # the log's time (to the second, as %t writes it), not the time sync first saw the role
    assert before.replace(microsecond=0) <= st["seen"]["last_login"] <= after
    first_seen = sc.sql("SELECT first_seen FROM inactive_users.user_login_status WHERE user_name = 'seen'")
    assert st["seen"]["last_login"] < first_seen[0][0] - timedelta(seconds=1)
    # a role the lookback window shows no login for starts its clock when the job first sees it
    never_seen = sc.sql("SELECT first_seen FROM inactive_users.user_login_status WHERE user_name = 'never'")
    assert st["never"]["last_login"] == never_seen[0][0]
    # from then on the time only moves forward: a re-read of an older login changes nothing
    eng.run([sc.writer])
    assert sc.statuses()["seen"]["last_login"] == st["seen"]["last_login"]


def test_a_login_still_settling_keeps_its_role_unlocked(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("returning")
    sc.create_role("idle")
    eng = sc.engine(settle_seconds=300, max_log_gap_hours=48)
    eng.migrate()
    eng.sync_roles()
    sc.set_last_login("returning", 120)
    sc.set_last_login("idle", 120)
    assert sc.login("returning")  # seconds ago: inside the settle window, not yet counted
    sc.ship()
    report = eng.run([sc.writer])
    assert report.ingest is not None and report.ingest.pending_logins >= 1
    assert report.plan is not None and "returning" in report.plan.kept_pending_login
    assert [o.name for o in report.lock.outcomes] == ["idle"]
    assert sc.role("returning")["can_login"] is True  # type: ignore[index]
    assert sc.statuses()["returning"]["status"] == "Active"
    # the action task's fresh plan sees the same pending login
    assert "returning" in eng.plan([sc.writer]).kept_pending_login


def test_retention_guard_refuses_until_overridden_and_records_the_override(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("quiet")
    assert sc.login("postgres", password=sc.pg.password)
    sc.ship()
    sc.logs.put_retention_policy(logGroupName=group(sc), retentionInDays=1)
    eng = sc.engine()
    eng.run([sc.writer])
    sc.set_last_login("quiet", 120)
    # the job did not run for three days: its last read is older than what the group keeps
    sc.sql("UPDATE inactive_users.user_login_job_status SET last_processed_time = now() - interval '3 days'")
    assert sc.login("postgres", password=sc.pg.password)
    sc.ship()
    with pytest.raises(SafetyGuardError) as err:
        sc.engine().run([sc.writer])
    message = str(err.value)
    assert "retention guard" in message and sc.writer in message
    assert "keeps events for 1 days" in message and "3.0 days ago" in message
    assert '{"override_retention": true}' in message
    assert sc.role("quiet")["can_login"] is True  # type: ignore[index]

    # the watermark moved on, but the logins in the gap are still unknown: it keeps refusing
    with pytest.raises(SafetyGuardError, match="retention guard"):
        sc.engine().run([sc.writer])

    overridden = sc.engine(run_id="dba-override")
    overridden.override_retention = True
    report = overridden.run([sc.writer])
    assert [o.name for o in report.lock.outcomes] == ["quiet"]
    rows = sc.sql(
        "SELECT user_name, run_id, detail->>'gap' FROM inactive_users.action_history "
        "WHERE action = 'override_retention'"
    )
    assert [(r[0], r[1]) for r in rows] == [(sc.writer, "dba-override")]
    assert "keeps events for 1 days" in rows[0][2]
    # and the next ordinary run no longer refuses
    sc.engine().run([sc.writer])


def test_no_retention_policy_never_refuses(scenario: Scenario) -> None:
    sc = scenario
    assert sc.login("postgres", password=sc.pg.password)
    sc.ship()
    eng = sc.engine()
    eng.run([sc.writer])
    old: datetime = sc.sql(
        "UPDATE inactive_users.user_login_job_status SET last_processed_time = now() - interval '30 days' "
        "RETURNING last_processed_time"
    )[0][0]
    assert sc.login("postgres", password=sc.pg.password)
    sc.ship()
    report = eng.run([sc.writer])
    assert report.ingest is not None and report.ingest.retention_gaps == {}
    assert old < datetime.now(old.tzinfo) - timedelta(days=29)
