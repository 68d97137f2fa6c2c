"""Exposure: dormant roles that keep their access, and the runs that have not acted (real PostgreSQL).

What ``postgres.exposure`` reads is checked against the state table and ``pg_roles`` read by the
test itself, and its upcoming count against the policy's own plan of the same roles.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from inactive_users.core.alerts import compose_failure
from inactive_users.core.exposure import (
    ACTED,
    FAILED,
    NOTHING_TO_DO,
    REFUSED,
    Report,
    RoleExposure,
    RunRecord,
    alert_lines,
    fix_for,
    manifest_entry,
)
from inactive_users.core.policy import make_plan
from inactive_users.postgres import state
from tests.scenario import Scenario

AGES = {"fresh": 5, "soon": 80, "past_lock": 100, "older": 130, "locked_old": 200, "gone_old": 300}


def _seed(sc: Scenario) -> None:
    for name in AGES:
        sc.create_role(name)
    eng = sc.engine()
    eng.migrate()
    eng.sync_roles()
    for name, days in AGES.items():
        sc.set_last_login(name, days)
    # a role the job locked, one whose role was dropped outside the job, one unlocked by hand
    sc.sql("ALTER ROLE locked_old NOLOGIN")
    sc.sql("UPDATE inactive_users.user_login_status SET status = 'Locked' WHERE user_name = 'locked_old'")
    sc.sql("UPDATE inactive_users.user_login_status SET status = 'Locked' WHERE user_name = 'older'")
    sc.sql("DROP ROLE gone_old")


def _expected(sc: Scenario, as_of: datetime) -> dict[str, object]:
    """What the state table and pg_roles say, counted here."""
    st = sc.statuses()
    roles = {n: sc.role(n) for n in st}
    can = {n: bool(r and r["can_login"] and r["conn_limit"] != 0) for n, r in roles.items()}
    alive = {n for n, r in roles.items() if r is not None}
    lock_due = {n: v["last_login"] + timedelta(days=90) for n, v in st.items()}
    drop_due = {n: v["last_login"] + timedelta(days=180) for n, v in st.items()}
    past_lock = [n for n in st if lock_due[n] <= as_of and can[n]]
    past_drop = [n for n in st if drop_due[n] <= as_of and n in alive and st[n]["status"] != "ReadyToDelete"]
    return {
        "past_lock": len(past_lock),
        "past_lock_since": min(lock_due[n] for n in past_lock),
        "past_drop": len(past_drop),
        "past_drop_since": min(drop_due[n] for n in past_drop),
        "counts": {s: sum(1 for v in st.values() if v["status"] == s) for s in ("Active", "Locked")},
    }


def test_roles_past_each_threshold_that_keep_access_match_the_state_table(scenario: Scenario) -> None:
    sc = scenario
    _seed(sc)
    report = sc.engine().exposure()
    r = report.roles
    want = _expected(sc, r.as_of)
    # older (Locked in the table but able to log in: unlocked by hand) counts; locked_old does not
    assert (
        (r.past_lock, r.past_lock_since)
        == (want["past_lock"], want["past_lock_since"])
        == (
            2,
            sc.statuses()["older"]["last_login"] + timedelta(days=90),
        )
    )
    # locked_old is past the drop threshold and not dropped; gone_old no longer exists
    assert (
        (r.past_drop, r.past_drop_since)
        == (want["past_drop"], want["past_drop_since"])
        == (
            1,
            sc.statuses()["locked_old"]["last_login"] + timedelta(days=180),
        )
    )
    assert dict(r.counts) == {**want["counts"], "ReadyToDelete": 0}  # type: ignore[dict-item]
    assert (r.lock_after_days, r.delete_after_days) == (90, 180)

    # upcoming: the same count the policy's plan gives for the same roles at the same time
    with sc.engine().connection() as conn:
        plan = make_plan(
            state.fetch_states(conn, "inactive_users"),
            state.fetch_roles(conn, ()),
            sc.engine().exclusions(conn),
            sc.engine().settings.thresholds(),
            r.as_of,
        )
    assert r.upcoming == len(plan.upcoming) == 1  # soon: locked in 10 days

    # thresholds set to never: nothing is past them
    never = sc.engine(lock_after_days=None, delete_after_days=None).exposure().roles
    assert (never.past_lock, never.past_drop, never.upcoming) == (0, 0, 0)


def test_the_run_record_counts_runs_in_a_row_that_did_not_act(scenario: Scenario) -> None:
    sc = scenario
    sc.engine().migrate()
    assert sc.engine().exposure().runs == RunRecord()  # no run yet: protected as far as it knows

    def record(run: str, outcome: str, days_ago: float, reason: str | None = None) -> None:
        sc.engine(run_id=run).record_outcome(outcome, "plan", reason)
        sc.sql(
            "UPDATE inactive_users.run_outcome SET recorded_at = now() - %s::interval WHERE run_id = %s",
            timedelta(days=days_ago),
            run,
        )

    record("r1", ACTED, 6)
    record("r2", REFUSED, 5, "SafetyGuardError: safety guard: old")
    record("r3", NOTHING_TO_DO, 4.5)
    record("r4", REFUSED, 4, "SafetyGuardError: safety guard: this run would lock 9 of 10")
    record("r5", FAILED, 3, "OperationalError: connection refused")
    record("r6", REFUSED, 2, "SafetyGuardError: retention guard: x")
    [(protected_at,)] = sc.sql("SELECT recorded_at FROM inactive_users.run_outcome WHERE run_id = 'r3'")
    [(first_at,)] = sc.sql("SELECT recorded_at FROM inactive_users.run_outcome WHERE run_id = 'r4'")
    runs = sc.engine(run_id="r7").exposure().runs
    assert (runs.last_protected_at, runs.not_acted, runs.first_not_acted_at) == (protected_at, 3, first_at)
    assert runs.unprotected_since == protected_at
    assert runs.last_refusal is not None and runs.last_refusal[1:] == (
        REFUSED,
        "r6",
        "SafetyGuardError: retention guard: x",
    )
    now = sc.engine().exposure().roles.as_of
    assert runs.unprotected_days(now) == pytest.approx(4.5, abs=0.01)

    # r6 cleared and acting: a run that acted stays recorded as such, whatever a later task says
    sc.engine(run_id="r6").record_outcome(ACTED, "lock_users")
    sc.engine(run_id="r6").record_outcome(REFUSED, "delete_users", "ApprovalError: no answer")
    [(outcome,)] = sc.sql("SELECT outcome FROM inactive_users.run_outcome WHERE run_id = 'r6'")
    assert outcome == ACTED
    after = sc.engine(run_id="r6").exposure().runs
    assert after.not_acted == 0 and after.unprotected_since is None
    # ... and the run itself asks how things stood before it: 2 runs had not acted since r3
    before = sc.engine(run_id="r6").exposure(before_this_run=True).runs
    assert (before.not_acted, before.last_protected_at) == (2, protected_at)
    entry = manifest_entry(before, now)
    assert entry is not None and entry["runs_not_acted"] == 2 and entry["since"] == protected_at.isoformat()
    assert entry["days"] == pytest.approx(4.5, abs=0.01)
    assert manifest_entry(after, now) is None


def test_a_state_schema_before_run_outcome_says_so(scenario: Scenario) -> None:
    sc = scenario
    sc.engine().migrate()
    sc.sql("DROP TABLE inactive_users.run_outcome")
    runs = sc.engine().exposure().runs
    assert runs.recorded is False and runs.not_acted == 0


# -- the alert's section (pure) -----------------------------------------------------------------

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _report(not_acted: int, protected_days_ago: float | None) -> Report:
    roles = RoleExposure(
        as_of=NOW,
        lock_after_days=90,
        delete_after_days=180,
        past_lock=7,
        past_lock_since=NOW - timedelta(days=40),
        past_drop=2,
        past_drop_since=NOW - timedelta(days=3),
    )
    last = NOW - timedelta(days=protected_days_ago) if protected_days_ago is not None else None
    first = NOW - timedelta(days=1)
    return Report(roles, RunRecord(last, not_acted, first if not_acted else None))


def test_the_failure_alert_states_the_exposure_the_runs_and_the_fix() -> None:
    report = _report(4, 2.5)
    reason = "SafetyGuardError: safety guard: this run would lock 9 of 10 candidate roles (90%)"
    alert = compose_failure("orders", "scheduled__1", "plan", RuntimeError(reason), report, reason=reason)
    assert alert.subject == "[inactive_users] FAILED orders: task plan"
    body = alert.body
    assert (
        "  7 roles past lock_after_days (90): can still log in; "
        "the oldest past it since 2026-10-23 (40 days)." in body
    )
    assert (
        "  2 roles past delete_after_days (180): neither dropped nor flagged ReadyToDelete; "
        "the oldest past it since 2026-11-29 (3 days)." in body
    )
    assert (
        "  4 runs in a row have not acted "
        "(the last run that acted or had nothing to do was at 2026-11-30T00:00+00:00)." in body
    )
    assert f"  Why: {reason}" in body
    assert (
        "  Fix: check that the connection logs are complete; if the plan is right, set override_guard" in body
    )
    assert "ESCALATED" not in body


def test_past_max_unprotected_days_the_subject_escalates() -> None:
    report = _report(5, 4.2)
    alert = compose_failure("orders", "r", "preflight", "boom", report, max_unprotected_days=3)
    assert alert.subject == "[inactive_users] UNPROTECTED 4 DAYS orders: task preflight failed"
    assert "ESCALATED: not acted for 4.2 days, longer than max_unprotected_days (3)" in alert.body
    assert compose_failure("orders", "r", "preflight", "boom", report, max_unprotected_days=5).subject == (
        "[inactive_users] FAILED orders: task preflight"
    )
    # never acted at all: unprotected since the first run that did not act
    never = _report(2, None)
    assert never.runs.unprotected_since == NOW - timedelta(days=1)
    assert "no run has acted yet" in "\n".join(
        alert_lines(never, reason="x", outcome=FAILED, max_unprotected_days=3)
    )
    # a state table that cannot be read is said, not hidden
    why = "the state table could not be read (OperationalError: connection refused)"
    unknown = compose_failure("orders", "r", "preflight", "boom", why)
    assert f"Exposure: unknown: {why}" in unknown.body


def test_each_refusal_gets_its_fix() -> None:
    assert "override_retention" in fix_for("SafetyGuardError: retention guard: instance-1: last read ...")
    assert "log_line_prefix" in fix_for("log format guard: 3 connection events read, none in the format")
    assert "log_connections" in fix_for("SafetyGuardError: log gap guard: no connection log events")
    assert "instance_endpoints" in fix_for("session guard: open sessions could not be read")
    assert "lease" in fix_for("ConcurrentRunError: another run holds the run lease")
    assert "retries" in fix_for("OperationalError: timeout", FAILED)
    assert "the reason above says" in fix_for("TopologyError: DB cluster 'x' not found")
