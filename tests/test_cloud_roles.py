"""Roles that RDS / Aurora create for themselves are never tracked, locked or dropped.

The roles are real login roles in the test cluster, with the names Aurora uses and clocks far past
every threshold; they are not superusers (as on Aurora), so nothing but the name protects them.
"""

from __future__ import annotations

import pytest

from inactive_users.core.policy import CLOUD_ROLES
from tests.dagrun import DagHarness
from tests.scenario import Scenario

# Aurora's own login roles (not superusers there) and names of the reserved forms.
CLOUD_LOGINS = [
    "rdsadmin",
    "rdstopmgr",
    "rdswriteforwarduser",
    "rdsrepladmin",
    "rdsproxyadmin",
    "rds_ad_sync",
    "rdsfuturething",
]  # pg_* names cannot be created (PostgreSQL reserves them); policy tests cover them


def test_the_protected_list_names_where_each_role_comes_from() -> None:
    assert {"rdsadmin", "rdstopmgr", "rdswriteforwarduser", "rdsrepladmin", "rdsproxyadmin"} <= set(
        CLOUD_ROLES
    )
    assert all(CLOUD_ROLES.values())


@pytest.mark.single_pg_version("the protected names are AWS's; PostgreSQL is only the target")
def test_cloud_roles_with_old_clocks_are_never_touched(scenario: Scenario, dag_harness: DagHarness) -> None:
    sc, h = scenario, dag_harness
    for name in [*CLOUD_LOGINS, "app_idle"]:
        sc.create_role(name)
    eng = sc.engine()
    eng.migrate()
    # an older version tracked everything that could log in; give every row an ancient clock
    for name in [*CLOUD_LOGINS, "app_idle"]:
        sc.sql(
            "INSERT INTO inactive_users.user_login_status (user_name, last_login_time, status, role_oid) "
            "SELECT rolname, now() - interval '400 days', 'Active', oid FROM pg_roles WHERE rolname = %s",
            name,
        )
    before = {name: sc.role(name) for name in CLOUD_LOGINS}
    for instance in (sc.writer, sc.reader):  # both streams show connection events (the gap guard)
        assert sc.login("postgres", password=sc.pg.password)
        sc.ship(instance)

    states = h.run()
    assert states["report"] == "success", states

    assert {name: sc.role(name) for name in CLOUD_LOGINS} == before  # untouched: still log in
    assert sc.role("app_idle") is None  # the ordinary dormant role was dropped (400 days)
    st = sc.statuses()
    assert not set(CLOUD_LOGINS) & set(st)  # no longer tracked
    reasons = dict(
        sc.sql("SELECT user_name, reason FROM inactive_users.action_history WHERE action = 'sync_remove'")
    )
    assert reasons["rdstopmgr"] == "excluded: reserved RDS role (RDS topology manager role)"
    assert reasons["rdswriteforwarduser"] == "excluded: reserved RDS role (Aurora write forwarding role)"
    assert reasons["rdsfuturething"] == "excluded: reserved name prefix 'rds'"
    acted = {u for a, u, _ in sc.history() if a in ("lock", "drop", "ready_to_delete")}
    assert acted == {"app_idle"}


@pytest.mark.parametrize("name", ["rdstopmgr", "rdswriteforwarduser"])
def test_a_cloud_role_an_older_version_locked_is_restored(scenario: Scenario, name: str) -> None:
    sc = scenario
    sc.create_role(name)
    eng = sc.engine()
    eng.migrate()
    # what an older version did: locked it with NOLOGIN and recorded the prior attributes
    sc.sql(f'ALTER ROLE "{name}" NOLOGIN')
    sc.sql(
        "INSERT INTO inactive_users.user_login_status (user_name, last_login_time, status, role_oid, "
        "lock_method, prior_can_login, prior_conn_limit, locked_at) "
        "SELECT rolname, now() - interval '100 days', 'Locked', oid, 'nologin', true, -1, now() "
        "FROM pg_roles WHERE rolname = %s",
        name,
    )
    eng.sync_roles()
    assert sc.role(name)["can_login"] is True  # type: ignore[index]
    assert name not in sc.statuses()
    actions = [a for a, u, _ in sc.history() if u == name]
    assert actions == ["unlock", "sync_remove"]
    assert sc.login(name)
