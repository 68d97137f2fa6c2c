"""The pure policy: exclusions, thresholds and the safety guards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inactive_users.core.policy import (
    ACTIVE,
    LOCKED,
    READY_TO_DELETE,
    STATUSES,
    Due,
    Exclusions,
    RoleInfo,
    StreamHealth,
    Thresholds,
    UserState,
    days_until,
    due,
    exclusion_reason,
    log_gap_error,
    make_plan,
    managed_roles,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def role(oid: int, name: str, **kw: object) -> RoleInfo:
    return RoleInfo(oid, name, kw.pop("can_login", True), **kw)  # type: ignore[arg-type]


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


@pytest.mark.parametrize(
    "r, ex, reason",
    [
        (role(1, "rdsadmin"), Exclusions(), "reserved RDS role (RDS administration role)"),
        (role(1, "rdstopmgr"), Exclusions(), "reserved RDS role (RDS topology manager role)"),
        (role(1, "rdswriteforwarduser"), Exclusions(), "reserved RDS role (Aurora write forwarding role)"),
        (role(1, "rdsproxyadmin"), Exclusions(), "reserved RDS role (RDS Proxy administration role)"),
        (role(1, "rdsnewthing"), Exclusions(), "reserved name prefix 'rds'"),
        (role(1, "rds_iam_user"), Exclusions(), "reserved name prefix 'rds_'"),
        (role(1, "pg_monitor_x"), Exclusions(), "reserved name prefix 'pg_'"),
        (
            role(1, "rdsadmin"),
            Exclusions(protected=frozenset({"rdsadmin"})),
            "reserved RDS role (RDS administration role)",
        ),
        (role(1, "master"), Exclusions(protected=frozenset({"master"})), "master or job user"),
        (role(1, "root", superuser=True), Exclusions(), "superuser"),
        (role(1, "svc"), Exclusions.build(users=["svc"]), "exclude_users"),
        (role(1, "tmp_42"), Exclusions.build(patterns=[r"tmp_\d+"]), "exclude_patterns 'tmp_\\\\d+'"),
        (role(1, "ann", exempt_via="dba"), Exclusions(), "member of exempt group 'dba'"),
    ],
)
def test_exclusion_reasons(r: RoleInfo, ex: Exclusions, reason: str) -> None:
    assert exclusion_reason(r, ex) == reason


def test_patterns_are_full_matches_and_superusers_can_be_included() -> None:
    ex = Exclusions.build(patterns=["tmp"], include_superusers=True)
    assert exclusion_reason(role(1, "tmp_1"), ex) is None
    assert exclusion_reason(role(1, "root", superuser=True), ex) is None


def test_bad_regex_names_the_pattern() -> None:
    with pytest.raises(ValueError, match=r"exclude_patterns: '\(unclosed'"):
        Exclusions.build(patterns=["(unclosed"])


def test_managed_roles_keeps_roles_we_hold_locked() -> None:
    roles = [role(1, "a"), role(2, "b", can_login=False), role(3, "c", can_login=False), role(4, "rdsadmin")]
    assert [r.name for r in managed_roles(roles, Exclusions(), held={2})] == ["a", "b"]


def test_plan_thresholds_and_statuses() -> None:
    roles = {
        i: role(i, n) for i, n in enumerate(["fresh", "idle", "old", "older_locked", "flagged", "busy"], 1)
    }
    states = [
        UserState("fresh", 1, ago(10), ACTIVE),
        UserState("idle", 2, ago(95), ACTIVE),
        UserState("old", 3, ago(200), ACTIVE),
        UserState("older_locked", 4, ago(181), LOCKED),
        UserState("flagged", 5, ago(300), READY_TO_DELETE),
        UserState("busy", 6, ago(400), ACTIVE),
    ]
    plan = make_plan(states, roles, Exclusions(), Thresholds(max_action_ratio=1), NOW, active_sessions={6})
    assert [p.name for p in plan.lock] == ["idle"]
    assert [p.name for p in plan.delete] == ["old", "older_locked", "flagged"]
    assert plan.kept_active_session == ["busy"]
    assert plan.candidates == 6
    assert plan.new_actions == 3  # the ReadyToDelete re-check does not count
    assert plan.lock[0].inactive_days == 95


def test_null_thresholds_never_act() -> None:
    roles = {1: role(1, "x")}
    plan = make_plan([UserState("x", 1, ago(1000), ACTIVE)], roles, Exclusions(), Thresholds(None, None), NOW)
    assert plan.lock == [] and plan.delete == []


def test_lock_boundary_is_inclusive() -> None:
    roles = {1: role(1, "x"), 2: role(2, "y")}
    states = [UserState("x", 1, ago(90), ACTIVE), UserState("y", 2, ago(90) + timedelta(seconds=1), ACTIVE)]
    plan = make_plan(states, roles, Exclusions(), Thresholds(max_action_ratio=1), NOW)
    assert [p.name for p in plan.lock] == ["x"]


def test_days_until_each_threshold_agree_with_the_plan() -> None:
    """The status page's days until lock / drop: 0 exactly when the plan acts, None when never."""
    t = Thresholds(90, 180, max_action_ratio=1)
    for days in (0, 0.5, 89.99, 90, 120.25, 179.5, 180, 400):
        when = due(ago(days), t, locked=False)
        plan = make_plan([UserState("x", 1, ago(days), ACTIVE)], {1: role(1, "x")}, Exclusions(), t, NOW)
        assert (days_until(when.lock, NOW) == 0) == bool(plan.lock or plan.delete), days
        assert (days_until(when.drop, NOW) == 0) == bool(plan.delete), days
    assert days_until(due(ago(80.5), t, locked=False).lock, NOW) == 10  # 9.5 days left: rounded up
    assert due(ago(100), t, locked=True).lock is None  # locked already: no lock is due
    assert due(ago(100), Thresholds(None, None), locked=False) == Due(None, None)
    assert days_until(None, NOW) is None


def test_renamed_or_recreated_roles_are_not_acted_on_until_synced() -> None:
    roles = {1: role(1, "renamed"), 9: role(9, "x")}
    states = [UserState("x", 1, ago(500), ACTIVE)]
    plan = make_plan(states, roles, Exclusions(), Thresholds(max_action_ratio=1), NOW)
    assert plan.delete == [] and plan.candidates == 0


def test_safety_guard() -> None:
    roles = {i: role(i, f"u{i}") for i in range(10)}
    states = [UserState(f"u{i}", i, ago(100 if i < 3 else 1), ACTIVE) for i in range(10)]
    plan = make_plan(states, roles, Exclusions(), Thresholds(max_action_ratio=0.25), NOW)
    assert plan.guard_error and "3 of 10" in plan.guard_error and "max_action_ratio=25%" in plan.guard_error
    plan = make_plan(states, roles, Exclusions(), Thresholds(max_action_ratio=0.3), NOW)
    assert plan.guard_error is None
    plan = make_plan(states, roles, Exclusions(), Thresholds(max_action_ratio=0.25, override_guard=True), NOW)
    assert plan.guard_error is None and len(plan.lock) == 3


def test_log_gap_guard() -> None:
    gap = timedelta(hours=48)
    h = StreamHealth
    assert log_gap_error({"i1": h(ago(1)), "i2": h(ago(0.5))}, NOW, gap) is None
    err = log_gap_error({"i1": h(ago(1)), "i2": h(ago(3)), "i3": h(None)}, NOW, gap)
    assert err is not None
    assert "i2: last connection event at" in err and "i3: no connection events found at all" in err
    assert "log_connections" in err and "i1" not in err and "log format guard" not in err


def test_log_gap_guard_tells_a_wrong_format_from_a_missing_export() -> None:
    gap = timedelta(hours=48)
    streams = {
        "i1": StreamHealth(None, 12, "2026-12-01 10:00:00.123 UTC [4242] …@… LOG:  connection authorized: …"),
        "i2": StreamHealth(None, 0, None),
    }
    err = log_gap_error(streams, NOW, gap, "%t:%r:%u@%d:[%p]:")
    assert err is not None
    assert "i1: 12 connection events read, none in the format of log_line_prefix = '%t:%r:%u@%d:[%p]:'" in err
    assert "(for example: 2026-12-01 10:00:00.123 UTC [4242] …@… LOG:  connection authorized: …)" in err
    assert "i2: no connection events found at all" in err
    assert err.index("log format guard") < err.index("log gap guard")


# -- property: excluded roles are never acted on -----------------------------------------------

role_names = st.sampled_from(
    [
        "alice",
        "bob",
        "svc_app",
        "tmp_1",
        "tmp_22",
        "rdsadmin",
        "rds_x",
        "pg_y",
        "master",
        "root",
        "ann",
        "zed",
    ]
)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[UserState], dict[int, RoleInfo], Exclusions, set[int]]:
    names = draw(st.lists(role_names, unique=True, min_size=1))
    roles = {}
    states = []
    for oid, name in enumerate(names, start=100):
        roles[oid] = RoleInfo(
            oid,
            name,
            draw(st.booleans()),
            superuser=draw(st.booleans()),
            exempt_via=draw(st.sampled_from([None, None, "dba"])),
        )
        days = draw(st.floats(0, 1000))
        states.append(UserState(name, oid, NOW - timedelta(days=days), draw(st.sampled_from(STATUSES))))
    ex = Exclusions.build(
        users=draw(st.lists(role_names, max_size=3)),
        patterns=draw(st.lists(st.sampled_from([r"tmp_\d+", "svc_.*", "a.*", "[bz].+"]), max_size=2)),
        include_superusers=draw(st.booleans()),
        protected=draw(st.lists(role_names, max_size=2)),
    )
    sessions = set(draw(st.lists(st.sampled_from(sorted(roles)), max_size=3)))
    return states, roles, ex, sessions


@settings(max_examples=500, deadline=None)
@given(
    world=worlds(),
    lock_days=st.one_of(st.none(), st.integers(1, 400)),
    extra=st.one_of(st.none(), st.integers(1, 400)),
    ratio=st.floats(0.01, 1),
    override=st.booleans(),
)
def test_excluded_roles_are_never_acted_on(
    world: tuple[list[UserState], dict[int, RoleInfo], Exclusions, set[int]],
    lock_days: int | None,
    extra: int | None,
    ratio: float,
    override: bool,
) -> None:
    states, roles, ex, sessions = world
    delete_days = None if extra is None else (lock_days or 0) + extra
    plan = make_plan(states, roles, ex, Thresholds(lock_days, delete_days, ratio, override), NOW, sessions)
    acted = plan.lock + plan.delete
    for item in acted:
        r = roles[item.oid]
        assert exclusion_reason(r, ex) is None
        assert r.name not in ex.users and r.name not in ex.protected
        assert not any(p.fullmatch(r.name) for p in ex.patterns)
        assert r.exempt_via is None and r.name != "rdsadmin"
        assert not r.name.startswith(("rds_", "pg_"))
        assert ex.include_superusers or not r.superuser
        assert item.oid not in sessions
    assert len({i.name for i in acted}) == len(acted)  # nobody is both locked and deleted
    assert all(i.status == ACTIVE for i in plan.lock)
    if not override and plan.guard_error is None and plan.new_actions:
        assert plan.new_actions / plan.candidates <= ratio


def test_how_far_back_a_login_still_changes_a_decision() -> None:
    assert Thresholds(90, 180).horizon == timedelta(days=180)
    assert Thresholds(90, None).horizon == timedelta(days=90)
    assert Thresholds(None, None).horizon is None


def test_a_new_instance_opens_a_retention_gap_only_if_it_may_have_had_logins_that_expired() -> None:
    from inactive_users.core.policy import new_instance_gap

    now = datetime(2026, 12, 7, tzinfo=UTC)
    read_from = now - timedelta(days=180)
    group = "/aws/rds/instance/db-r1/postgresql"
    gap = new_instance_gap("db-r1", read_from, now, 30, group, None)
    assert gap is not None and gap.startswith("db-r1: read for the first time, but log group ")
    assert "keeps events for 30 days, so its logins before 2026-11-07T00:00:00+00:00" in gap
    # never expiring, kept long enough, or created within the retention: nothing can be missing
    assert new_instance_gap("db-r1", read_from, now, None, group, None) is None
    assert new_instance_gap("db-r1", read_from, now, 365, group, None) is None
    assert new_instance_gap("db-r1", read_from, now, 30, group, now - timedelta(days=2)) is None
    assert new_instance_gap("db-r1", read_from, now, 30, group, now - timedelta(days=40)) is not None


def test_the_standby_guard_counts_each_server_once_and_skips_archivers() -> None:
    from inactive_users.core.policy import standby_error

    ignored = ("pg_receivewal",)
    # an RDS primary with a replica and a replica of it: three instances, two receivers
    tree = {"db": ("t1", ["walreceiver"]), "db-r1": ("t2", ["walreceiver"]), "db-r1-r1": ("t3", [])}
    assert standby_error(tree, 3, ignored) is None
    # the same primary configured alone: its replica is not read
    error = standby_error({"db": ("t1", ["walreceiver", "pg_receivewal"])}, 1, ignored)
    assert error is not None and error.startswith("standby guard: db sends its WAL to 1 ('walreceiver')")
    assert "at least 1 standby whose logins and sessions count is not read" in error
    # two instance names for one server (a tunnel, a test) count its receivers once
    assert standby_error({"w": ("t1", ["a"]), "r": ("t1", ["a"])}, 2, ignored) is None
    assert standby_error({"aurora-1": ("t1", []), "aurora-2": ("t2", [])}, 2, ignored) is None
