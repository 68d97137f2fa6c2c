"""Upcoming locks and drops: who is listed, the alert's section, one alert per change, role contacts.

The policy part is pure; the end-to-end part runs the real DAG against a real cluster, with the
alert through SNS (moto) and the contacts' notices through a loopback SMTP server.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from devstack.smtpsink import SmtpSink
from inactive_users.core.alerts import compose, compose_contact_notice
from inactive_users.core.policy import (
    ACTIVE,
    LOCKED,
    READY_TO_DELETE,
    Exclusions,
    RoleInfo,
    Thresholds,
    Upcoming,
    UserState,
    make_plan,
)
from inactive_users.core.settings import EngineSettings, SettingsError
from inactive_users.postgres.notices import contact_address, fingerprint
from tests.dagrun import DagHarness
from tests.scenario import Scenario

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
T = Thresholds(lock_after_days=90, delete_after_days=180, max_action_ratio=1.0, warn_before_days=14)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def plan_for(rows: list[tuple[str, float, str]], t: Thresholds = T, **kw: object) -> list[Upcoming]:
    states = [UserState(name, oid, ago(days), status) for oid, (name, days, status) in enumerate(rows, 1)]
    roles = {oid: RoleInfo(oid, name, True) for oid, (name, _, _) in enumerate(rows, 1)}
    return make_plan(states, roles, Exclusions.build(**kw), t, NOW).upcoming  # type: ignore[arg-type]


def test_roles_reaching_a_threshold_within_the_window_are_upcoming_soonest_first() -> None:
    up = plan_for(
        [
            ("far", 60, ACTIVE),  # lock in 30 days: outside 14
            ("lock_soon", 80, ACTIVE),  # lock in 10 days
            ("lock_edge", 76, ACTIVE),  # lock in exactly 14 days: inside
            ("locking_now", 170, ACTIVE),  # locked this run, dropped in 10 days
            ("locked", 175, LOCKED),  # dropped in 5 days
            ("locked_far", 120, LOCKED),  # dropped in 60 days
            ("dropping_now", 200, LOCKED),  # acted on this run, not upcoming
            ("flagged", 300, READY_TO_DELETE),  # past both thresholds
        ]
    )
    assert [(u.name, u.action, u.due) for u in up] == [
        ("locked", "drop", ago(175) + timedelta(days=180)),
        ("lock_soon", "lock", ago(80) + timedelta(days=90)),
        ("locking_now", "drop", ago(170) + timedelta(days=180)),
        ("lock_edge", "lock", NOW + timedelta(days=14)),
    ]


def test_excluded_roles_and_thresholds_switched_off_are_never_upcoming() -> None:
    rows = [("app", 80, ACTIVE), ("svc_batch", 80, ACTIVE)]
    assert [u.name for u in plan_for(rows, users=["svc_batch"])] == ["app"]
    assert plan_for(rows, Thresholds(90, 180, 1.0, warn_before_days=None)) == []
    # no lock threshold: the drop is the next event; no drop threshold: only the lock
    assert [(u.name, u.action) for u in plan_for([("app", 170, ACTIVE)], Thresholds(None, 180, 1.0))] == [
        ("app", "drop")
    ]
    assert plan_for([("app", 170, LOCKED)], Thresholds(90, None, 1.0)) == []


def test_a_role_with_a_session_or_a_pending_login_is_not_upcoming() -> None:
    states = [UserState("busy", 1, ago(80), ACTIVE), UserState("settling", 2, ago(80), ACTIVE)]
    roles = {1: RoleInfo(1, "busy", True), 2: RoleInfo(2, "settling", True)}
    plan = make_plan(states, roles, Exclusions(), T, NOW, active_sessions={1}, pending_logins={"settling"})
    assert plan.upcoming == []


def test_warn_before_days_is_validated_with_its_name() -> None:
    assert EngineSettings().warn_before_days == 14
    for bad in (0, -3, 2.5, "14", True):
        with pytest.raises(SettingsError, match="warn_before_days must be a whole number"):
            EngineSettings(warn_before_days=bad)  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="notify_role_contacts must be true or false"):
        EngineSettings(notify_role_contacts="yes")  # type: ignore[arg-type]


def test_the_fingerprint_ignores_order_and_time_of_day_but_not_the_due_day() -> None:
    a = Upcoming("a", 1, ago(80), "lock", NOW + timedelta(days=10))
    b = Upcoming("b", 2, ago(170), "drop", NOW + timedelta(days=10))
    later_same_day = Upcoming("a", 1, ago(80), "lock", NOW + timedelta(days=10, hours=3))
    assert fingerprint([a, b]) == fingerprint([b, a]) == fingerprint([later_same_day, b])
    assert fingerprint([a]) != fingerprint([a, b])
    assert fingerprint([Upcoming("a", 1, ago(80), "lock", NOW + timedelta(days=11))]) != fingerprint([a])


@pytest.mark.parametrize(
    "comment, address",
    [
        ("Reporting service. contact: ana.owner@example.com", "ana.owner@example.com"),
        ("CONTACT:team+db@corp.example.org (on call)", "team+db@corp.example.org"),
        ("owner: ana, no contact", None),
        ("contact: not-an-address", None),
        (None, None),
    ],
)
def test_contact_address(comment: str | None, address: str | None) -> None:
    assert contact_address(comment) == address


UPCOMING = [
    {
        "name": "ana",
        "action": "lock",
        "due": "2026-12-12T09:30:00+00:00",
        "last_login": "2026-09-13T09:30:00+00:00",
    },
    {
        "name": "bob",
        "action": "drop",
        "due": "2026-12-14T00:00:00+00:00",
        "last_login": "2026-06-17T00:00:00+00:00",
    },
]


def test_the_alert_lists_upcoming_roles_after_the_actions() -> None:
    outcomes = [{"name": "dan", "action": "locked", "last_login": "2026-08-01T00:00:00+00:00"}]
    alert = compose(
        "c", "r", outcomes, dry_run=False, upcoming=UPCOMING, upcoming_total=2, warn_before_days=14
    )
    assert alert is not None
    assert alert.subject == "[inactive_users] c: 1 locked, 2 upcoming"
    body = alert.body
    assert body.index("Locked: 1") < body.index("Upcoming (within 14 days): 2")
    assert "  - ana: will be locked on 2026-12-12 09:30 UTC; last login 2026-09-13T09:30:00+00:00" in body
    assert "  - bob: will be dropped (or flagged ReadyToDelete if objects depend on it) on 2026-12-14" in body


def test_upcoming_roles_alone_make_an_alert_and_a_sample_says_how_many_more() -> None:
    alert = compose("c", "r", [], dry_run=True, upcoming=UPCOMING[:1], upcoming_total=40, warn_before_days=14)
    assert alert is not None
    assert alert.subject == "[inactive_users] DRY RUN c: 40 upcoming, no action"
    assert "... and 39 more not listed here: the plan task's log lists them" in alert.body
    assert compose("c", "r", [], dry_run=False, upcoming=[], upcoming_total=0) is None


def test_the_contact_notice_names_the_role_the_cluster_and_the_date() -> None:
    notice = compose_contact_notice("orders-prod", {**UPCOMING[0], "contact": "ana.owner@example.com"})
    assert notice.subject == "[inactive_users] orders-prod: login ana will be locked"
    assert (
        "The database login ana on cluster orders-prod was last used 2026-09-13T09:30:00+00:00" in notice.body
    )
    assert "on 2026-12-12 09:30 UTC" in notice.body and "log in with it before then" in notice.body


# -- end to end ------------------------------------------------------------------------------------


@pytest.mark.single_pg_version("five DAG runs of alert bookkeeping; no SQL here differs by version")
def test_upcoming_alerts_once_per_change_and_tells_each_contact_once(
    scenario: Scenario, dag_harness: DagHarness
) -> None:
    sc, h = scenario, dag_harness
    names = ["ana", "bob", "cat", "dan", "eve", "keeper"]
    for name in names:
        sc.create_role(name)
    sc.sql("COMMENT ON ROLE ana IS 'Reporting service. contact: ana.owner@example.com'")
    sc.sql("COMMENT ON ROLE bob IS 'no contact here'")
    for instance in (sc.writer, sc.reader):  # both streams show connection events (the log-gap guard)
        assert sc.login("keeper")
        sc.ship(instance)
    with SmtpSink() as sink:
        sc.monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(sink.airflow_conn()))
        h.write_config(defaults={"notify_role_contacts": True})
        assert h.run()["report"] == "success"  # first run: every role tracked, active
        h.messages()
        for name, days in (("ana", 80), ("bob", 172), ("cat", 60), ("dan", 95), ("eve", 30)):
            sc.set_last_login(name, days)

        # a run with actions: dan and bob locked; ana's lock and bob's drop are upcoming
        states = h.run()
        assert states["alert"] == "success", states
        [alert] = h.messages()
        assert alert["subject"] == f"[inactive_users] {sc.cluster_id}: 2 locked, 2 upcoming"
        body = alert["message"]
        assert "Upcoming (within 14 days): 2" in body
        assert "  - bob: will be dropped" in body and "  - ana: will be locked on " in body
        assert body.index("  - bob: will be dropped") < body.index("  - ana: will be locked")  # soonest first
        [(rcpt, mail)] = sink.received  # bob's comment names no contact
        assert rcpt == ["ana.owner@example.com"]
        assert mail["Subject"] == f"[inactive_users] {sc.cluster_id}: login ana will be locked"

        # nothing to do, the same upcoming set: no alert, no second notice
        states = h.run()
        assert states["alert"] == "skipped" and states["report"] == "success", states
        assert h.messages() == [] and len(sink.received) == 1

        # eve joins the upcoming set: an alert with no action, only the upcoming section
        sc.set_last_login("eve", 85)
        assert h.run()["alert"] == "success"
        [alert] = h.messages()
        assert alert["subject"] == f"[inactive_users] {sc.cluster_id}: 3 upcoming, no action"
        assert "  - eve: will be locked on " in alert["message"] and "Locked:" not in alert["message"]
        assert len(sink.received) == 1  # eve has no contact; ana was told already

        # a preview 20 days ahead: what would be done then, and what would be upcoming then
        as_of = (datetime.now(UTC) + timedelta(days=20)).isoformat()
        assert h.run({"dry_run": True, "as_of": as_of})["alert"] == "success"
        [preview] = h.messages()
        assert preview["subject"].startswith(f"[inactive_users] DRY RUN {sc.cluster_id}: ")
        assert "  - cat: will be locked on " in preview["message"]  # 60 + 20 days: lock in 10
        assert "Would lock: 2" in preview["message"]  # ana and eve by then
        assert len(sink.received) == 1  # a dry run tells no contact

    rows = sc.sql("SELECT user_name, action, contact FROM inactive_users.contact_notice")
    assert rows == [("ana", "lock", "ana.owner@example.com")]
    [(roles,)] = sc.sql("SELECT roles FROM inactive_users.upcoming_alert")
    assert roles == 3
