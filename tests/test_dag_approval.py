"""With approve_drops, the runs that ask nobody: a dry run, and drops that could only flag.

These finish under ``dag.test()``: no human answer is needed. The runs that ask (approve, reject,
timeout, marked successful by hand) need a live Airflow: tests/test_live_approval.py.
"""

from __future__ import annotations

import pytest

from devstack.stories import seed_last_login
from tests.dagrun import DagHarness
from tests.scenario import Scenario

pytestmark = pytest.mark.single_pg_version("the subject is the DAG's approval flow, not PostgreSQL")


def stage(sc: Scenario, h: DagHarness, roles: dict[str, int]) -> None:
    """Roles with a last login ``roles[name]`` days ago in the state table; one owns a table."""
    for name in [*roles, "app"]:
        sc.create_role(name)
    sc.sql("CREATE TABLE ledger (id int)")
    sc.sql("ALTER TABLE ledger OWNER TO owner200")
    sc.engine().migrate()
    for name, days in roles.items():
        seed_last_login(sc.admin, name, days)
    for instance in (sc.writer, sc.reader):  # both instances' logs, exported
        assert sc.login("app")
        sc.ship(instance)
    h.write_config(approve_drops=True)


def test_a_dry_run_asks_nothing_and_previews_the_drops(scenario: Scenario, dag_harness: DagHarness) -> None:
    sc, h = scenario, dag_harness
    stage(sc, h, {"gone200": 200, "owner200": 200, "idle100": 100})
    states = h.run(conf={"dry_run": True})
    assert states["approve_drops"] == "success" and states["delete_users"] == "success", states
    assert states["report"] == "success"
    assert all(r["can_login"] for r in map(sc.role, ["gone200", "owner200", "idle100"]))  # type: ignore[index]
    [alert] = h.messages()
    assert alert["subject"].startswith("[inactive_users] DRY RUN test-aurora:"), alert
    assert "Would drop (DROP ROLE): 1\n  - gone200" in alert["message"], alert["message"]
    assert "Would lock: 3" in alert["message"]  # the roles due to be dropped are locked first
    assert "drops" not in alert["subject"]  # nothing was decided


def test_drops_that_could_only_flag_ask_nobody_and_drop_nothing(
    scenario: Scenario, dag_harness: DagHarness
) -> None:
    sc, h = scenario, dag_harness
    stage(sc, h, {"owner200": 200, "idle100": 100})
    states = h.run()
    assert states["approve_drops"] == "success" and states["delete_users"] == "success", states
    assert states["report"] == "success"
    st = sc.statuses()
    assert st["owner200"]["status"] == "ReadyToDelete" and sc.role("owner200")["can_login"] is False  # type: ignore[index]
    assert st["idle100"]["status"] == "Locked"
    assert not sc.history("drop")
    [alert] = h.messages()
    assert "Flagged ReadyToDelete" in alert["message"] and "owner200" in alert["message"]
    assert "approve" not in alert["subject"].lower()
