from tests.scenario import Scenario


def test_smoke(scenario: Scenario) -> None:
    sc = scenario
    sc.create_role("alice")
    sc.create_role("old_timer")
    eng = sc.engine()
    eng.migrate()
    print(eng.sync_roles())
    assert sc.login("alice")
    sc.ship()
    print(eng.ingest([sc.writer]))
    sc.set_last_login("old_timer", 100)
    plan = eng.plan([sc.writer])
    print(plan.summary())
    print(eng.lock(plan))
    print(sc.statuses())
    print(sc.history())
