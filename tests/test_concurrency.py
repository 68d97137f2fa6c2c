"""Two runs of one cluster at once: one acts, the other stops cleanly, nothing is done twice."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from inactive_users.core.settings import EngineSettings
from inactive_users.engine import Engine
from inactive_users.postgres.state import ConcurrentRunError
from tests.scenario import Scenario


def leased_engine(sc: Scenario, run_id: str) -> Engine:
    """An engine as a DAG run builds it: actions require this run to hold the cluster's lease."""
    return Engine.from_airflow(
        sc.pg_conn_id,
        EngineSettings(settle_seconds=0, max_action_ratio=1.0),
        run_id=run_id,
        cluster_id=sc.cluster_id,
        aws_conn_id=sc.aws_conn_id,
        region_name="us-east-1",
        use_lease=True,
    )


def test_two_runs_started_at_once(scenario: Scenario) -> None:
    sc = scenario
    names = [f"idle{i}" for i in range(5)]
    for name in names:
        sc.create_role(name)
    setup = sc.engine()
    setup.migrate()
    setup.sync_roles()
    for name in names:
        sc.set_last_login(name, 100)
    sc.ship()

    barrier = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def run(run_id: str) -> None:
        eng = leased_engine(sc, run_id)
        barrier.wait()
        try:
            eng.acquire_lease(timedelta(hours=1))
            outcome[run_id] = eng.run([sc.writer]).lock.names("locked")
        except ConcurrentRunError as exc:
            outcome[run_id] = exc

    threads = [threading.Thread(target=run, args=(f"run-{i}",)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    winners = [r for r, o in outcome.items() if isinstance(o, list)]
    losers = [o for o in outcome.values() if isinstance(o, ConcurrentRunError)]
    assert len(winners) == 1 and len(losers) == 1, outcome
    assert outcome[winners[0]] == names
    assert "holds the run lease" in str(losers[0]) and "without changing anything" in str(losers[0])
    locks = sc.history("lock")
    assert sorted(h[1] for h in locks) == names and {h[2] for h in locks} == {winners[0]}


@pytest.mark.parametrize(("action", "days", "done"), [("lock", 100, "locked"), ("delete", 200, "dropped")])
def test_a_run_that_lost_its_lease_cannot_act(scenario: Scenario, action: str, days: int, done: str) -> None:
    sc = scenario
    sc.create_role("idle")
    first = leased_engine(sc, "run-1")
    first.migrate()
    first.acquire_lease(timedelta(hours=1))
    first.sync_roles()
    sc.set_last_login("idle", days)
    sc.ship()
    plan = first.plan()
    assert [p.name for p in getattr(plan, action)] == ["idle"]
    sc.sql("UPDATE inactive_users.run_lease SET expires_at = now() - interval '1 second'")  # run-1 stalled
    second = leased_engine(sc, "run-2")
    second.acquire_lease(timedelta(hours=1))  # the expired lease is taken over
    with pytest.raises(ConcurrentRunError, match="'run-1' does not hold the run lease"):
        getattr(first, action)(plan)
    assert sc.role("idle")["can_login"] is True  # type: ignore[index]
    assert sc.history("lock") == sc.history("drop") == sc.history("ready_to_delete") == []
    assert getattr(second, action)(second.plan()).names(done) == ["idle"]
    second.release_lease()
    assert sc.sql("SELECT count(*) FROM inactive_users.run_lease") == [(0,)]
    first.acquire_lease(timedelta(hours=1))  # a later run starts normally once it is released


def test_a_later_run_replaces_the_recorded_plan_and_a_stalled_run_cannot_record(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("idle")
    sc.create_role("gone")
    first = leased_engine(sc, "run-1")
    first.migrate()
    first.acquire_lease(timedelta(hours=1))
    first.sync_roles()
    sc.set_last_login("idle", 100)
    sc.set_last_login("gone", 200)
    sc.ship()
    oids = {name: sc.role(name)["oid"] for name in ("idle", "gone")}  # type: ignore[index]
    assert first.record_plan(first.plan()) == {"lock": 1, "delete": 1}
    assert first.recorded_plan("lock") == {("idle", oids["idle"])}
    assert first.recorded_plan("delete") == {("gone", oids["gone"])}
    sc.sql("UPDATE inactive_users.run_lease SET expires_at = now() - interval '1 second'")  # run-1 stalled
    second = leased_engine(sc, "run-2")
    second.acquire_lease(timedelta(hours=1))
    with pytest.raises(ConcurrentRunError, match="'run-1' does not hold the run lease"):
        first.record_plan(first.plan())
    second.record_plan(second.plan())
    assert first.recorded_plan("lock") == first.recorded_plan("delete") == set()  # its plan is gone
    assert second.recorded_plan("lock") == {("idle", oids["idle"])}
